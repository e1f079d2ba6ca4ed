//! The seed's sequence-parallel snippet: a LLaMA with `use_seq_parallel=True`. The seed runs it
//! on one device (`data_parallel=1, model_parallel=1`), where one rank holds the whole sequence
//! and nothing is split; this twin runs that, then the same with `model_parallel=2`, where the
//! LayerNorm (RMSNorm) and dropout regions of each layer hold half of the sequence per rank and
//! all-gather / reduce-scatter replace the all-reduce. Tiny sizes (the seed's
//! `LlamaConfig(seq_length=2048, num_layers=2)` is LLaMA-7B wide).
use mindformers::trainer::ParallelConfig;
use mindformers::{GeneratorDataset, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments};
use rand::Rng;

fn main() -> mindformers::Result<()> {
    let max_steps = std::env::var("MF_EXAMPLE_MAX_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let output = std::env::var("MF_EXAMPLE_OUTPUT").unwrap_or_else(|_| "./output".into());
    let input_ids: Vec<i32> = {
        let mut rng = rand::rng();
        (0..257).map(|_| rng.random_range(0..15)).collect()
    };
    for model_parallel in [1, 2] {
        tch::manual_seed(0);
        // training_args = TrainingArguments(num_train_epochs=1, batch_size=1, learning_rate=0.001,
        //                                   warmup_steps=100, sink_mode=True, sink_size=2)
        let training_args = TrainingArguments {
            num_train_epochs: 1.0,
            batch_size: Some(1),
            learning_rate: 0.001,
            warmup_steps: Some(100),
            sink_mode: true,
            sink_size: 2,
            max_steps: Some(max_steps),
            output_dir: format!("{output}/seq_parallel_mp{model_parallel}"),
            ..Default::default()
        };
        let rows = input_ids.clone();
        let dataset = GeneratorDataset::new((0..512).map(move |_| rows.clone()), &["input_ids"])?;
        let train_dataset = dataset.batch(1, false)?;
        // llama_config = LlamaConfig(batch_size=1, seq_length=2048, num_layers=2)
        let llama_config = LlamaConfig::default()
            .with_batch_size(1)
            .with_seq_length(256)
            .with_num_layers(2)
            .with_hidden_size(64)
            .with_num_heads(4);
        let llama_model = LlamaForCausalLM::new(&llama_config)?;
        let mut task = Trainer::new("text_generation", Box::new(llama_model), training_args)?
            .train_dataset(train_dataset)?;
        task.set_parallel_config(ParallelConfig {
            data_parallel: 1,
            model_parallel,
            pipeline_stage: 1,
            use_seq_parallel: true,
            micro_batch_num: 1,
            ..Default::default()
        })?;
        let out = task.train()?;
        println!(
            "use_seq_parallel=True model_parallel={model_parallel}: losses {:?}",
            out.step_losses
        );
    }
    Ok(())
}
