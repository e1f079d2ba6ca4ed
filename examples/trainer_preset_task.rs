//! The seed's preset-task Trainer snippet:
//!
//! ```python
//! training_args = TrainingArguments(num_train_epochs=3, batch_size=2, learning_rate=0.001,
//!                                   warmup_steps=1000, sink_mode=True)
//! text_generation = Trainer(task='text_generation', model='gpt2', args=training_args,
//!                           train_dataset='./train', eval_dataset='./eval')
//! ```
//!
//! `./train` and `./eval` are token shards prepared as the GPT-2 model card describes, here with
//! `mf data prepare --tokenizer gpt2 --seq-length 1024 --output ./train <text or jsonl files>`.
//! `MF_EXAMPLE_MODEL` replaces the `gpt2` preset with another preset or a config directory
//! (the tests use a tiny one: full GPT-2 takes hours per epoch on a CPU).
use mindformers::{Trainer, TrainingArguments};

fn main() -> mindformers::Result<()> {
    // context_init(): a single device; see the parallel examples for more.
    let model = std::env::var("MF_EXAMPLE_MODEL").unwrap_or_else(|_| "gpt2".into());
    let training_args = TrainingArguments {
        num_train_epochs: 3.0,
        batch_size: Some(2),
        learning_rate: 0.001,
        warmup_steps: Some(1000),
        sink_mode: true,
        ..Default::default()
    };
    let mut text_generation = Trainer::new("text_generation", model.as_str(), training_args)?
        .train_dataset("./train")?
        .eval_dataset("./eval")?;
    let out = text_generation.train()?;
    let eval = text_generation.evaluate()?;
    println!(
        "trained {} steps; eval_loss {:.4} perplexity {:.2}",
        out.global_step, eval.eval_loss, eval.perplexity
    );
    if let Some(c) = out.last_checkpoint {
        println!("checkpoint: {}", c.display());
    }
    Ok(())
}
