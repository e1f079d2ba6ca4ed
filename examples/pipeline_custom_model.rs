//! A text generation pipeline over a model instance and tokenizer you built yourself.
//!
//! Python: `pipeline(task='text_generation', model=gpt_model, tokenizer=tok, max_length=10)`.
use mindformers::{format_outputs, pipeline, GPT2LMHeadModel, GPT2Tokenizer, GenerationOverrides};

fn main() -> mindformers::Result<()> {
    let tok = GPT2Tokenizer::from_pretrained("gpt2")?;
    let gpt_model = GPT2LMHeadModel::from_pretrained("gpt2")?;
    let text_generation = pipeline("text_generation")
        .model(gpt_model)
        .tokenizer(tok)
        .max_length(10)
        .build()?;
    let no_sampling = GenerationOverrides {
        do_sample: Some(false),
        ..Default::default()
    };
    let outputs = text_generation.call("I love Beijing, because", &no_sampling)?;
    println!("{}", format_outputs(&outputs));
    Ok(())
}
