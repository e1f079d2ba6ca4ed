//! AutoProcessor: a model's input preprocessing by name.
//!
//! Python: `print(AutoProcessor.from_pretrained("gpt2")("hello!"))`.
use mindformers::AutoProcessor;

fn main() -> mindformers::Result<()> {
    let gpt_processor = AutoProcessor::from_pretrained("gpt2")?;
    println!("{}", gpt_processor.call("hello!")?);
    Ok(())
}
