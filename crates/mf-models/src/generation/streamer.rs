//! Streaming generated tokens as they are produced.
use mf_tokenizers::Tokenizer;

/// Receives tokens as generation produces them.
pub trait Streamer {
    /// A new token for prompt `row`.
    fn put(&mut self, row: usize, token: u32);
    /// Generation finished.
    fn end(&mut self) {}
}

/// Decodes one row's tokens incrementally and hands each new piece of text to a callback,
/// holding back pieces that end inside a multi-byte character.
pub struct TextStreamer<'a, F: FnMut(&str)> {
    tokenizer: &'a Tokenizer,
    callback: F,
    row: usize,
    tokens: Vec<u32>,
    printed: usize,
    skip_special_tokens: bool,
}

impl<'a, F: FnMut(&str)> TextStreamer<'a, F> {
    /// Streams row 0 to `callback`.
    pub fn new(tokenizer: &'a Tokenizer, callback: F) -> Self {
        TextStreamer {
            tokenizer,
            callback,
            row: 0,
            tokens: Vec::new(),
            printed: 0,
            skip_special_tokens: true,
        }
    }

    /// Streams the given row instead of row 0.
    pub fn for_row(mut self, row: usize) -> Self {
        self.row = row;
        self
    }

    fn flush(&mut self, final_: bool) {
        let text = self
            .tokenizer
            .decode(&self.tokens, self.skip_special_tokens)
            .unwrap_or_default();
        if text.len() > self.printed && (final_ || !text.ends_with('\u{FFFD}')) {
            if let Some(new) = text.get(self.printed..) {
                (self.callback)(new);
            }
            self.printed = text.len();
        }
    }
}

impl<F: FnMut(&str)> Streamer for TextStreamer<'_, F> {
    fn put(&mut self, row: usize, token: u32) {
        if row == self.row {
            self.tokens.push(token);
            self.flush(false);
        }
    }

    fn end(&mut self) {
        self.flush(true);
    }
}

/// A streamer that forwards `(row, token)` pairs to a channel, for consuming tokens as an
/// iterator from another thread.
pub struct ChannelStreamer {
    tx: std::sync::mpsc::Sender<(usize, u32)>,
}

impl ChannelStreamer {
    /// A streamer and the receiving iterator end.
    pub fn new() -> (Self, std::sync::mpsc::Receiver<(usize, u32)>) {
        let (tx, rx) = std::sync::mpsc::channel();
        (ChannelStreamer { tx }, rx)
    }
}

impl Streamer for ChannelStreamer {
    fn put(&mut self, row: usize, token: u32) {
        // A dropped receiver only means nobody listens any more.
        let _ = self.tx.send((row, token));
    }
}
