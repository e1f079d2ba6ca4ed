//! AutoTokenizer: get a model's tokenizer by name.
//!
//! Python: `print(AutoTokenizer.from_pretrained("gpt2")("hello!"))`.
use mindformers::AutoTokenizer;

fn main() -> mindformers::Result<()> {
    let gpt_tokenizer = AutoTokenizer::from_pretrained("gpt2")?;
    println!("{}", gpt_tokenizer.encode("hello!")?);
    Ok(())
}
