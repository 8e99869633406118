//! Chat templates: turning conversations into the exact text an instruction-tuned model was
//! trained on, and marking which tokens of that text the assistant wrote.
//!
//! Hugging Face models ship their conversation format as a Jinja template (`chat_template` in
//! tokenizer_config.json, `tokenizer.chat_template` in GGUF metadata). [`ChatTemplate`] renders
//! those templates with minijinja configured like transformers' own renderer (`trim_blocks`,
//! `lstrip_blocks`, Python string methods such as `.strip()`, `raise_exception`, the
//! `bos_token`/`eos_token` variables), so prompts match what the model saw in training. SFT needs
//! the loss on assistant tokens only: [`ChatTemplate::render_with_assistant_mask`] derives that
//! mask from the template itself, so it is right for ChatML, Llama 3 and any template whose
//! rendering of a conversation prefix is a prefix of the full rendering.

use std::ops::Range;

use keel_core::{Message, Prompt, Role};
use minijinja::{context, Environment, ErrorKind};

use crate::tokenizer::{Tokenizer, TokenizerError, CHATML_TEMPLATE};

/// The instruction added to the system prompt when a dataset asks for the reasoning format: the
/// model thinks inside `<think>…</think>` and then answers. Format rewards and chain-of-thought
/// safety judges look for exactly these tags.
pub const REASONING_INSTRUCTION: &str = "Think through the problem step by step inside <think> and </think> tags, then give your final answer after the closing </think> tag.";

/// End-of-turn markers recognised after assistant content when building assistant masks (the
/// tokenizer's own EOS token is always recognised too).
const END_OF_TURN_MARKERS: [&str; 7] = [
    "<|im_end|>",
    "<|eot_id|>",
    "<|end|>",
    "<end_of_turn>",
    "</s>",
    "<|endoftext|>",
    "<|end_of_text|>",
];

/// Errors from compiling or rendering a chat template, or from tokenizing its output.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// The tokenizer carries no chat template (neither tokenizer_config.json nor GGUF metadata had one).
    #[error("tokenizer from {origin} has no chat template; add `chat_template` to its tokenizer_config.json or use ChatTemplate::chatml()")]
    NoTemplate {
        /// Where the tokenizer came from.
        origin: String,
    },
    /// The template is not valid Jinja.
    #[error("compiling chat template ({name}): {message}")]
    Compile {
        /// Which template (its origin).
        name: String,
        /// The minijinja error with line information.
        message: String,
    },
    /// Rendering failed, including the template's own `raise_exception(...)` calls (e.g. "roles
    /// must alternate").
    #[error("rendering chat template ({name}): {message}")]
    Render {
        /// Which template (its origin).
        name: String,
        /// The minijinja error, or the template's exception message.
        message: String,
    },
    /// Rendering hit one of the limits that keep a hostile or broken template from hanging Keel
    /// or exhausting memory ([`TEMPLATE_FUEL`], [`max_render_bytes`]).
    #[error("rendering chat template ({name}): {what}; Keel stops templates at this limit (a loop that never ends or nests too deeply?)")]
    Limit {
        /// Which template (its origin).
        name: String,
        /// Which limit was hit, with its value.
        what: String,
    },
    /// The assistant turns could not be located in the rendered text, so no mask can be built.
    #[error("chat template ({name}): cannot locate assistant message {index} in the rendered conversation: {reason}")]
    Mask {
        /// Which template (its origin).
        name: String,
        /// Index of the assistant message in the conversation.
        index: usize,
        /// Why it could not be located.
        reason: String,
    },
    /// Tokenizing the rendered text failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
}

/// A compiled Jinja chat template plus the special-token strings templates refer to.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    name: String,
    bos_token: String,
    eos_token: String,
    pad_token: String,
    unk_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("name", &self.name)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish()
    }
}

/// Template instructions one rendering may execute (minijinja fuel).
///
/// Why: a chat template is code from the model's files (tokenizer_config.json, GGUF metadata);
/// one with nested loops (`{% for i in range(100000) %}{% for j in range(100000) %}`) made chat,
/// serve and run hang. Real templates use some tens of instructions per message, so this bound
/// allows conversations of tens of thousands of messages, and running out of it takes about a
/// second (measured in the tests).
pub const TEMPLATE_FUEL: u64 = 20_000_000;

/// The most bytes a rendering of `messages` may produce: 1 MiB plus 8 times the conversation's
/// text. A template writes each message once plus fixed headers, so a longer output means a
/// template that loops over its output (memory grows until the process dies otherwise).
pub fn max_render_bytes(messages: &[Message]) -> usize {
    let text: usize = messages.iter().map(|m| m.content.len()).sum();
    (1usize << 20).saturating_add(text.saturating_mul(8))
}

/// An output buffer that refuses to grow beyond `limit` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    exceeded: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.exceeded = true;
            return Err(std::io::Error::other("chat template output limit reached"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(message: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(inner) = cur {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        cur = inner.source();
    }
    s
}

impl ChatTemplate {
    /// Compiles a Jinja chat template. `name` identifies it in error messages (e.g. the file it
    /// came from); `bos_token`/`eos_token` are exposed to the template as in transformers.
    pub fn new(
        source: impl Into<String>,
        name: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<Self, ChatError> {
        let source = source.into();
        let name = name.into();
        let mut env = Environment::new();
        // transformers renders with jinja2.Environment(trim_blocks=True, lstrip_blocks=True).
        env.set_trim_blocks(true);
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        // `strftime_now` is deliberately not defined: templates that use it (Llama 3.1) then fall
        // back to their fixed default date, which keeps renders reproducible.
        env.add_template_owned("chat_template", source.clone())
            .map_err(|e| ChatError::Compile {
                name: name.clone(),
                message: describe(&e),
            })?;
        Ok(ChatTemplate {
            env,
            source,
            name,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            pad_token: String::new(),
            unk_token: String::new(),
        })
    }

    /// The chat template that came with a tokenizer, with its BOS/EOS/PAD/UNK strings.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Result<Self, ChatError> {
        let source = tokenizer
            .chat_template()
            .ok_or_else(|| ChatError::NoTemplate {
                origin: tokenizer.origin().to_string(),
            })?;
        let sp = tokenizer.special_tokens();
        let mut t = Self::new(
            source,
            format!("chat_template of {}", tokenizer.origin()),
            sp.bos.clone().unwrap_or_default(),
            sp.eos.clone().unwrap_or_default(),
        )?;
        t.pad_token = sp.pad.clone().unwrap_or_default();
        t.unk_token = sp.unk.clone().unwrap_or_default();
        Ok(t)
    }

    /// The plain ChatML template (`<|im_start|>role\n…<|im_end|>\n`), for tokenizers that have no
    /// template of their own, e.g. those made by [`crate::tokenizer::train_bpe`] before saving.
    pub fn chatml() -> Self {
        match Self::new(
            CHATML_TEMPLATE,
            "built-in ChatML",
            "<|im_start|>",
            "<|im_end|>",
        ) {
            Ok(t) => t,
            // The constant is valid Jinja (covered by tests); an Environment without the
            // template would fail at render time with a clear error instead of panicking here.
            Err(_) => ChatTemplate {
                env: Environment::new(),
                source: CHATML_TEMPLATE.to_string(),
                name: "built-in ChatML".into(),
                bos_token: "<|im_start|>".into(),
                eos_token: "<|im_end|>".into(),
                pad_token: String::new(),
                unk_token: String::new(),
            },
        }
    }

    /// The Jinja source of the template.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The EOS string the template sees as `eos_token`.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Renders a conversation. With `add_generation_prompt` the text ends with the header that
    /// opens an assistant turn (`<|im_start|>assistant\n` for ChatML), ready for sampling.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template("chat_template")
            .map_err(|e| ChatError::Render {
                name: self.name.clone(),
                message: describe(&e),
            })?;
        let limit = max_render_bytes(messages);
        let mut out = CappedWriter { buf: Vec::new(), limit, exceeded: false };
        let rendered = tmpl.render_captured_to(
            context! {
                messages => minijinja::Value::from_serialize(messages),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
                pad_token => &self.pad_token,
                unk_token => &self.unk_token,
            },
            &mut out,
        );
        let name = || self.name.clone();
        match rendered {
            Ok(_) => {}
            Err(_) if out.exceeded => {
                return Err(ChatError::Limit {
                    name: name(),
                    what: format!("its output exceeded {limit} bytes for a conversation of {} bytes", limit_text(messages)),
                })
            }
            Err(e) if e.kind() == ErrorKind::OutOfFuel => {
                return Err(ChatError::Limit {
                    name: name(),
                    what: format!("it executed more than {TEMPLATE_FUEL} template instructions"),
                })
            }
            Err(e) => return Err(ChatError::Render { name: name(), message: describe(&e) }),
        }
        String::from_utf8(out.buf)
            .map_err(|e| ChatError::Render { name: name(), message: format!("the output is not UTF-8: {e}") })
    }


    /// Renders a conversation for SFT and returns its token ids with a 0/1 mask (same length)
    /// that is 1 exactly on the tokens of assistant turns: the assistant's content and the
    /// end-of-turn token that follows it (so the model learns to stop), and 0 on system/user
    /// text and on the template's role headers.
    ///
    /// How: for assistant message `i`, rendering `messages[..i]` with the generation prompt gives
    /// the text before the assistant's words, and rendering `messages[..=i]` gives the text up to
    /// the end of its turn; the assistant span runs from the end of the first to the end of the
    /// content plus a directly following end-of-turn marker. When a template is not prefix-stable
    /// (it rewrites earlier turns), the content is found by an in-order search instead. Tokens
    /// whose first byte lies in a span are marked. The text is tokenized without adding special
    /// tokens, since the template writes them (as transformers' `apply_chat_template` does).
    pub fn render_with_assistant_mask(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
    ) -> Result<(Vec<u32>, Vec<u8>), ChatError> {
        let full = self.render(messages, false)?;
        let spans = self.assistant_spans(tokenizer, messages, &full)?;
        let (ids, offsets) = tokenizer.encode_with_offsets(&full, false)?;
        let mask = offsets
            .iter()
            .map(|&(start, end)| {
                let hit = spans.iter().any(|s| start >= s.start && start < s.end) ||
                    // Zero-width tokens cannot occur in byte-level BPE; treat defensively.
                    (start == end && spans.iter().any(|s| s.contains(&start)));
                u8::from(hit)
            })
            .collect();
        Ok((ids, mask))
    }

    /// Byte ranges of `full` written by the assistant (content + end-of-turn marker).
    fn assistant_spans(
        &self,
        tokenizer: &Tokenizer,
        messages: &[Message],
        full: &str,
    ) -> Result<Vec<Range<usize>>, ChatError> {
        let mut markers: Vec<String> = Vec::new();
        if !self.eos_token.is_empty() {
            markers.push(self.eos_token.clone());
        }
        for m in END_OF_TURN_MARKERS {
            if tokenizer.token_to_id(m).is_some() && !markers.iter().any(|x| x == m) {
                markers.push(m.to_string());
            }
        }
        let extend_marker = |end: usize| -> usize {
            let rest = &full[end..];
            markers
                .iter()
                .find(|m| rest.starts_with(m.as_str()))
                .map_or(end, |m| end + m.len())
        };

        let mut spans = Vec::new();
        let mut prefix_stable = true;
        for (i, m) in messages.iter().enumerate() {
            if m.role != Role::Assistant {
                continue;
            }
            let before = self.render(&messages[..i], true)?;
            let through = self.render(&messages[..=i], false)?;
            if !(full.starts_with(&before)
                && full.starts_with(&through)
                && through.starts_with(&before))
            {
                prefix_stable = false;
                break;
            }
            let start = before.len();
            let content = m.content.trim();
            let end = if content.is_empty() {
                start
            } else {
                match full[start..through.len()].find(content) {
                    Some(off) => start + off + content.len(),
                    None => {
                        return Err(ChatError::Mask {
                            name: self.name.clone(),
                            index: i,
                            reason: "the template changed the assistant's text".into(),
                        })
                    }
                }
            };
            spans.push(start..extend_marker(end));
        }
        if prefix_stable {
            return Ok(spans);
        }
        // Fallback: walk the conversation in order and find each message's content.
        spans.clear();
        let mut cursor = 0;
        for (i, m) in messages.iter().enumerate() {
            let content = m.content.trim();
            if content.is_empty() {
                continue;
            }
            // Reasoning templates (Qwen3, DeepSeek-R1) drop `<think>…</think>` from earlier
            // assistant turns; then only the final answer appears.
            let answer = content
                .rsplit_once("</think>")
                .map(|(_, a)| a.trim())
                .filter(|a| !a.is_empty());
            let found = full[cursor..]
                .find(content)
                .map(|off| (off, content.len()))
                .or_else(|| {
                    let a = answer.filter(|_| m.role == Role::Assistant)?;
                    full[cursor..].find(a).map(|off| (off, a.len()))
                });
            match found {
                Some((off, len)) => {
                    let start = cursor + off;
                    let end = start + len;
                    if m.role == Role::Assistant {
                        spans.push(start..extend_marker(end));
                    }
                    cursor = end;
                }
                None if m.role == Role::Assistant => {
                    return Err(ChatError::Mask {
                        name: self.name.clone(),
                        index: i,
                        reason: "the template is not prefix-stable and the assistant's text does not appear verbatim (nor its answer after </think>)".into(),
                    })
                }
                None => {}
            }
        }
        Ok(spans)
    }

    /// Renders a dataset prompt for sampling: the prompt's messages, with `system` as the system
    /// message when the prompt has none, and, when `reasoning` is set, [`REASONING_INSTRUCTION`]
    /// appended to the system message, followed by the generation prompt.
    pub fn format_prompt(
        &self,
        prompt: &Prompt,
        system: Option<&str>,
        reasoning: bool,
    ) -> Result<String, ChatError> {
        self.render(&prompt_messages(prompt, system, reasoning), true)
    }
}

/// Total bytes of the messages' text, for limit messages.
fn limit_text(messages: &[Message]) -> usize {
    messages.iter().map(|m| m.content.len()).sum()
}

/// The messages [`ChatTemplate::format_prompt`] renders: the prompt as chat messages, with
/// `system` used as the system message when the prompt has none, and [`REASONING_INSTRUCTION`]
/// appended to the system message when `reasoning` is set. Exposed so that remote (OpenAI-style)
/// backends, which apply the template server-side, send the same conversation.
pub fn prompt_messages(prompt: &Prompt, system: Option<&str>, reasoning: bool) -> Vec<Message> {
    let mut messages = prompt.to_messages();
    let has_system = messages.first().is_some_and(|m| m.role == Role::System);
    if !has_system {
        if let Some(s) = system {
            messages.insert(0, Message::new(Role::System, s));
        }
    }
    if reasoning {
        match messages.first_mut() {
            Some(m) if m.role == Role::System => {
                if m.content.trim().is_empty() {
                    m.content = REASONING_INSTRUCTION.to_string();
                } else {
                    m.content = format!("{}\n\n{}", m.content.trim_end(), REASONING_INSTRUCTION);
                }
            }
            _ => messages.insert(0, Message::new(Role::System, REASONING_INSTRUCTION)),
        }
    }
    messages
}
