//! The seed's `set_recompute_config` snippet: a LLaMA trained with full recompute
//! (`recompute=True`), then with selective recompute (`select_recompute=True`, the attention
//! core only). Recompute re-runs the forward of a layer during backward instead of keeping its
//! activations; the losses equal training without it. The seed's `LlamaConfig(batch_size=1)`
//! is LLaMA-7B; this twin keeps its structure at tiny sizes so it runs on a CPU.
use mindformers::trainer::RecomputeConfig;
use mindformers::{GeneratorDataset, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments};
use rand::Rng;

fn main() -> mindformers::Result<()> {
    let max_steps = std::env::var("MF_EXAMPLE_MAX_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2);
    let output = std::env::var("MF_EXAMPLE_OUTPUT").unwrap_or_else(|_| "./output".into());
    // def generator(): seq_len = 2049 (here 257); input_ids = np.random.randint(0, 15, (seq_len,))
    let input_ids: Vec<i32> = {
        let mut rng = rand::rng();
        (0..257).map(|_| rng.random_range(0..15)).collect()
    };
    let mut losses = Vec::new();
    for (recompute, select_recompute) in [(false, false), (true, false), (false, true)] {
        tch::manual_seed(0);
        // llama_config = LlamaConfig(batch_size=1)
        let llama_config = LlamaConfig::default()
            .with_batch_size(1)
            .with_hidden_size(64)
            .with_num_heads(4)
            .with_num_layers(2)
            .with_seq_length(256);
        let llama_model = LlamaForCausalLM::new(&llama_config)?;
        let rows = input_ids.clone();
        let dataset = GeneratorDataset::new((0..512).map(move |_| rows.clone()), &["input_ids"])?;
        let train_dataset = dataset.batch(1, false)?;
        let args = TrainingArguments {
            max_steps: Some(max_steps),
            output_dir: format!("{output}/recompute_{recompute}_{select_recompute}"),
            ..Default::default()
        };
        let mut text_generation = Trainer::new("text_generation", Box::new(llama_model), args)?
            .train_dataset(train_dataset)?;
        // text_generation.set_recompute_config(recompute=True, select_recompute=False)
        // text_generation.set_recompute_config(recompute=False, select_recompute=True)
        text_generation.set_recompute_config(RecomputeConfig {
            recompute,
            select_recompute,
            ..Default::default()
        })?;
        let out = text_generation.train()?;
        println!(
            "recompute={recompute} select_recompute={select_recompute}: losses {:?}",
            out.step_losses
        );
        losses.push(out.step_losses);
    }
    let same = losses.iter().all(|l| {
        l.iter()
            .zip(&losses[0])
            .all(|(a, b)| ((a - b) / b).abs() < 1e-5)
    });
    println!("losses equal to training without recompute: {same}");
    Ok(())
}
