//! A processor over a custom tokenizer and length, for secondary development.
//!
//! Python: `GPT2Processor(tokenizer=tok, max_length=256, return_tensors='ms')`.
use mindformers::{GPT2Processor, GPT2Tokenizer};

fn main() -> mindformers::Result<()> {
    let tok = GPT2Tokenizer::from_pretrained("gpt2")?;
    let gpt_processor = GPT2Processor::new(tok, 256, "ms")?;
    println!("{}", gpt_processor.call("hello!")?);
    Ok(())
}
