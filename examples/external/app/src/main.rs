//! A text generation pipeline from a project that depends on `mindformers`:
//! `mf-example-app MODEL PROMPT [MAX_NEW_TOKENS]` prints the greedy continuation of PROMPT.
use mindformers::{pipeline, GenerationOverrides};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(prompt)) = (args.next(), args.next()) else {
        return Err("usage: mf-example-app MODEL PROMPT [MAX_NEW_TOKENS]".into());
    };
    let max_new_tokens = match args.next() {
        Some(n) => n.parse()?,
        None => 20,
    };
    let greedy = GenerationOverrides {
        do_sample: Some(false),
        max_new_tokens: Some(max_new_tokens),
        ..Default::default()
    };
    let text_generation = pipeline("text_generation")
        .model(model.as_str())
        .generation(greedy.clone())
        .build()?;
    for output in text_generation.call(&prompt, &greedy)? {
        for text in output.text_generation_text {
            println!("{text}");
        }
    }
    Ok(())
}
