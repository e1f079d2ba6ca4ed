//! Tokenize with the model's own tokenizer class.
//!
//! Python: `print(GPT2Tokenizer.from_pretrained("gpt2")("hello!"))`.
use mindformers::GPT2Tokenizer;

fn main() -> mindformers::Result<()> {
    let gpt_tokenizer = GPT2Tokenizer::from_pretrained("gpt2")?;
    println!("{}", gpt_tokenizer.encode("hello!")?);
    Ok(())
}
