//! TrainingArguments: customise the training hyperparameters (printed as the TOML `mf` reads).
//!
//! Python: `TrainingArguments(num_train_epochs=3, batch_size=2, learning_rate=0.001, warmup_steps=1000, sink_mode=True)`.
use mindformers::TrainingArguments;

fn main() -> mindformers::Result<()> {
    let training_args = TrainingArguments {
        num_train_epochs: 3.0,
        batch_size: Some(2),
        learning_rate: 0.001,
        warmup_steps: Some(1000),
        sink_mode: true,
        ..Default::default()
    };
    training_args.validate()?;
    print!("{}", training_args.to_toml()?);
    Ok(())
}
