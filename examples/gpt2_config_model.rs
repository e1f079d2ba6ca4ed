//! Instantiate a config and model through the model's own classes.
//!
//! Python: `GPT2Config.from_pretrained("gpt2_13b")`, `GPT2LMHeadModel.from_pretrained("gpt2_13b")`.
use mindformers::{GPT2Config, GPT2LMHeadModel, PreTrainedModel};

fn main() -> mindformers::Result<()> {
    let gpt_13b_config = GPT2Config::from_pretrained("gpt2_13b")?;
    println!(
        "gpt2_13b config: hidden_size={} num_layers={} num_heads={} seq_length={}",
        gpt_13b_config.hidden_size,
        gpt_13b_config.num_layers,
        gpt_13b_config.num_heads,
        gpt_13b_config.seq_length
    );
    // Loads the weights placed in $MF_HOME/gpt2_13b (MindFormers publishes none on the hub).
    let gpt_13b_model = GPT2LMHeadModel::from_pretrained("gpt2_13b")?;
    println!(
        "gpt2_13b model: {} parameters loaded",
        gpt_13b_model.num_parameters()
    );
    Ok(())
}
