//! The seed's `set_parallel_config` snippets ("并行配置" and "多副本并行配置"): a Trainer with
//! `data_parallel=4, model_parallel=2, pipeline_stage=2, micro_batch_num=2` (16 ranks), then
//! the same with `micro_batch_interleave_num=2`. On a CPU the ranks are threads of this process
//! (the threads backend) and the sizes are tiny (the seed's hidden_size=768, num_layers=12 are
//! cut to 64 and 4). `MF_EXAMPLE_MAX_STEPS` (default 2) caps the optimizer steps of each run.
use mindformers::trainer::ParallelConfig;
use mindformers::{
    GeneratorDataset, PanguAlphaConfig, PanguAlphaHeadModel, Trainer, TrainingArguments,
};
use rand::Rng;

fn main() -> mindformers::Result<()> {
    let max_steps = std::env::var("MF_EXAMPLE_MAX_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let output = std::env::var("MF_EXAMPLE_OUTPUT").unwrap_or_else(|_| "./output".into());
    // def generator(): seq_len = 1025 (here 129); input_ids = np.random.randint(0, 15, (seq_len,))
    let generator = || {
        let mut rng = rand::rng();
        let input_ids: Vec<i32> = (0..129).map(|_| rng.random_range(0..15)).collect();
        (0..512).map(move |_| input_ids.clone())
    };
    for interleave in [1, 2] {
        let training_args = TrainingArguments {
            num_train_epochs: 3.0,
            batch_size: Some(2),
            learning_rate: 0.001,
            warmup_steps: Some(1000),
            sink_mode: true,
            max_steps: Some(max_steps),
            output_dir: format!("{output}/interleave{interleave}"),
            ..Default::default()
        };
        // pangu_config = PanguAlphaConfig(hidden_size=768, ffn_hidden_size=768 * 4, num_layers=12,
        //                                 num_heads=12, checkpoint_name_or_path='')
        // pangu_model = PanguAlphaHeadModel(pangu_config)
        let pangu_config = PanguAlphaConfig {
            hidden_size: 64,
            ffn_hidden_size: 64 * 4,
            num_layers: 4,
            num_heads: 4,
            vocab_size: 64,
            seq_length: 128,
            checkpoint_name_or_path: String::new(),
            ..Default::default()
        };
        let pangu_model = PanguAlphaHeadModel::new(&pangu_config)?;
        let dataset = GeneratorDataset::new(generator(), &["input_ids"])?;
        // A global batch of 16 rows: 4 data-parallel shards x 2 micro-batches x `interleave`
        // copies must divide it.
        let train_dataset = dataset.clone().batch(16, true)?;
        let eval_dataset = dataset.take(16).batch(16, false)?;
        let mut text_generation =
            Trainer::new("text_generation", Box::new(pangu_model), training_args)?
                .train_dataset(train_dataset)?
                .eval_dataset(eval_dataset)?;
        // text_generation.set_parallel_config(data_parallel=4, model_parallel=2, pipeline_stage=2,
        //                                     micro_batch_num=2[, micro_batch_interleave_num=2])
        text_generation.set_parallel_config(ParallelConfig {
            data_parallel: 4,
            model_parallel: 2,
            pipeline_stage: 2,
            micro_batch_num: 2,
            micro_batch_interleave_num: interleave,
            ..Default::default()
        })?;
        let out = text_generation.train()?;
        println!(
            "micro_batch_interleave_num={interleave}: {} ranks trained {} steps, losses {:?}",
            text_generation.parallel_config().device_num(),
            out.global_step,
            out.step_losses
        );
    }
    Ok(())
}
