//! A text generation pipeline over a preset model.
//!
//! Python: `pipeline(task='text_generation', model='gpt2', max_length=10)("I love Beijing, because", do_sample=False)`.
use mindformers::{format_outputs, pipeline, GenerationOverrides};

fn main() -> mindformers::Result<()> {
    let text_generation = pipeline("text_generation")
        .model("gpt2")
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
