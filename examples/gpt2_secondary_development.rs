//! Build a model from a hand-written config for secondary development (random weights).
//!
//! Python: `GPT2LMHeadModel(GPT2Config(hidden_size=768, num_layers=12))`.
use mindformers::{GPT2Config, GPT2LMHeadModel, PreTrainedModel};

fn main() -> mindformers::Result<()> {
    let gpt_config = GPT2Config {
        hidden_size: 768,
        num_layers: 12,
        ..Default::default()
    };
    let gpt_model = GPT2LMHeadModel::new(&gpt_config)?;
    println!(
        "GPT2LMHeadModel(hidden_size=768, num_layers=12): {} parameters",
        gpt_model.num_parameters()
    );
    Ok(())
}
