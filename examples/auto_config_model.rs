//! AutoConfig && AutoModel: instantiate a supported model's config and weights by name.
//!
//! Python: `AutoConfig.from_pretrained("gpt2")`, `AutoModel.from_pretrained("gpt2")`.
use mindformers::{AutoConfig, AutoModel};

fn main() -> mindformers::Result<()> {
    let gpt_config = AutoConfig::from_pretrained("gpt2")?;
    let c = gpt_config.clone().into_gpt2()?;
    println!(
        "gpt2 config: hidden_size={} num_layers={} num_heads={} seq_length={} vocab_size={}",
        c.hidden_size, c.num_layers, c.num_heads, c.seq_length, c.vocab_size
    );
    // Loads the preset's weights from $MF_HOME, the Hugging Face cache, or the hub.
    let gpt_model = AutoModel::from_pretrained("gpt2")?;
    println!(
        "gpt2 model: {} parameters loaded",
        gpt_model.num_parameters()
    );
    Ok(())
}
