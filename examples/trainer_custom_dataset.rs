//! Trainer with a custom GeneratorDataset, model and arguments (the seed's third Trainer snippet):
//! `pangu_model = AutoModel.from_pretrained("pangualpha_2_6b")` trained on the seed's
//! 1025-token samples. The weights come from `$MF_HOME/pangualpha_2_6b/` (MindFormers ships
//! them as MindSpore checkpoints; see crates/mf-models/presets/pangualpha/pangualpha_2_6b.toml). A CPU cannot
//! run 3 epochs of a 2.6B model, so `MF_EXAMPLE_MAX_STEPS` (default 4) caps the optimizer steps.
use mindformers::{AutoModel, GeneratorDataset, Trainer, TrainingArguments};
use rand::Rng;

fn main() -> mindformers::Result<()> {
    let max_steps = std::env::var("MF_EXAMPLE_MAX_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    // def generator(): seq_len = 1025; input_ids = np.random.randint(0, 15, (seq_len,)); yield it 512 times
    let generator = || {
        let mut rng = rand::rng();
        let input_ids: Vec<i32> = (0..1025).map(|_| rng.random_range(0..15)).collect();
        (0..512).map(move |_| input_ids.clone())
    };
    let training_args = TrainingArguments {
        num_train_epochs: 3.0,
        batch_size: Some(2),
        learning_rate: 0.001,
        warmup_steps: Some(1000),
        sink_mode: true,
        max_steps: Some(max_steps),
        output_dir: std::env::var("MF_EXAMPLE_OUTPUT").unwrap_or_else(|_| "./output".into()),
        ..Default::default()
    };
    let pangu_model = AutoModel::from_pretrained("pangualpha_2_6b")?;
    let dataset = GeneratorDataset::new(generator(), &["input_ids"])?;
    let train_dataset = dataset.clone().batch(4, false)?;
    let eval_dataset = dataset.take(8).batch(4, false)?;
    let mut text_generation = Trainer::new("text_generation", pangu_model, training_args)?
        .train_dataset(train_dataset)?
        .eval_dataset(eval_dataset)?;
    let out = text_generation.train()?;
    println!(
        "trained {} steps; eval {:?}",
        out.global_step,
        text_generation.evaluate()?
    );
    Ok(())
}
