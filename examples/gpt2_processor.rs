//! Preprocess with the model's own processor class.
//!
//! Python: `print(GPT2Processor.from_pretrained('gpt2')("hello!"))`.
use mindformers::GPT2Processor;

fn main() -> mindformers::Result<()> {
    let gpt_processor = GPT2Processor::from_pretrained("gpt2")?;
    println!("{}", gpt_processor.call("hello!")?);
    Ok(())
}
