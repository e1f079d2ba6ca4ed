//! Tokenizes as the seed document's `GPT2Tokenizer.from_pretrained("gpt2")("hello!")` does,
//! from a project that depends on `mf-tokenizers` only.
use mf_tokenizers::GPT2Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let text = std::env::args().nth(1).unwrap_or_else(|| "hello!".into());
    let tokenizer = GPT2Tokenizer::from_pretrained("gpt2")?;
    println!("{}", tokenizer.encode(&text)?);
    Ok(())
}
