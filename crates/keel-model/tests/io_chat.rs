//! Chat templates rendered with the real template strings of SmolLM2 (from its GGUF), Meta
//! Llama 3 Instruct and a Llama 3.1-style template, checked against hand-written expected text;
//! assistant masks checked token by token.

use keel_core::{Message, Prompt, Role};
use keel_model::{
    prompt_messages, train_bpe, ChatError, ChatTemplate, SpecialTokens, Tokenizer,
    REASONING_INSTRUCTION,
};

const SMOLLM2: &str = include_str!("io_fixtures/smollm2_chat_template.jinja");
const LLAMA3: &str = include_str!("io_fixtures/llama3_chat_template.jinja");
const LLAMA31: &str = include_str!("io_fixtures/llama31_chat_template.jinja");

const LLAMA_SPECIALS: [&str; 5] = [
    "<|begin_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
];

fn corpus() -> Vec<String> {
    (0..60)
        .map(|i| {
            format!(
                "What is {i} plus {}? The answer is {}. Paris is the capital of France.",
                i % 7,
                i + i % 7
            )
        })
        .collect()
}

fn chatml_tokenizer() -> Tokenizer {
    train_bpe(&corpus(), 420, &[]).unwrap()
}

fn llama3_tokenizer(template: &str) -> Tokenizer {
    train_bpe(&corpus(), 420, &LLAMA_SPECIALS)
        .unwrap()
        .with_special_tokens(SpecialTokens {
            bos: Some("<|begin_of_text|>".into()),
            eos: Some("<|eot_id|>".into()),
            pad: None,
            unk: None,
        })
        .unwrap()
        .with_chat_template(Some(template.to_string()))
}

fn conv() -> Vec<Message> {
    vec![
        Message::new(Role::System, "You are terse."),
        Message::new(Role::User, "What is 2 plus 2?"),
        Message::new(Role::Assistant, "The answer is 4."),
    ]
}

#[test]
fn chat_chatml_renders_expected_text() {
    let t = ChatTemplate::chatml();
    assert_eq!(
        t.render(&conv(), false).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\nThe answer is 4.<|im_end|>\n"
    );
    assert_eq!(
        t.render(&[Message::new(Role::User, "Hi")], true).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&[Message::new(Role::User, "Hi")], false).unwrap(),
        "<|im_start|>user\nHi<|im_end|>\n"
    );
}

#[test]
fn chat_smollm2_template_adds_default_system_prompt() {
    let t = ChatTemplate::new(SMOLLM2, "smollm2", "<|im_start|>", "<|im_end|>").unwrap();
    assert_eq!(
        t.render(&[Message::new(Role::User, "What is the capital of France?")], true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.render(&conv()[..2], true).unwrap(),
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn chat_llama3_template_renders_expected_text() {
    let t = ChatTemplate::new(LLAMA3, "llama3", "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let msgs = vec![
        Message::new(Role::System, "  You are terse.\n"),
        Message::new(Role::User, "Hi there"),
        Message::new(Role::Assistant, "Hello!"),
        Message::new(Role::User, "Capital of France?"),
    ];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nCapital of France?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn chat_llama31_style_template_renders_expected_text() {
    let t = ChatTemplate::new(LLAMA31, "llama3.1", "<|begin_of_text|>", "<|eot_id|>").unwrap();
    let msgs = vec![
        Message::new(Role::System, "Be brief."),
        Message::new(Role::User, "Hi"),
    ];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n\
         Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nBe brief.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn chat_python_string_methods_and_raise_exception() {
    let src = "{% for m in messages %}{% if m['role'] == 'user' and loop.index0 % 2 != 0 %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}[{{ m['role'].upper() }}] {{ m['content'].strip() }}{% if m['content'].strip().startswith('Q') %}?{% endif %}\n{% endfor %}";
    let t = ChatTemplate::new(src, "pycompat test", "", "").unwrap();
    // trim_blocks (as in transformers) eats the newline that follows `{% endif %}`.
    assert_eq!(
        t.render(&[Message::new(Role::User, "  Question  ")], false)
            .unwrap(),
        "[USER] Question?"
    );
    let err = t
        .render(
            &[Message::new(Role::User, "a"), Message::new(Role::User, "b")],
            false,
        )
        .unwrap_err();
    assert!(matches!(err, ChatError::Render { .. }));
    assert!(
        err.to_string()
            .contains("Conversation roles must alternate"),
        "{err}"
    );

    let err = ChatTemplate::new("{% for %}", "broken.jinja", "", "").unwrap_err();
    assert!(err.to_string().contains("broken.jinja"), "{err}");
}

/// Decodes the masked and unmasked tokens separately.
fn split_by_mask(tok: &Tokenizer, ids: &[u32], mask: &[u8]) -> (String, usize) {
    assert_eq!(ids.len(), mask.len());
    let masked: Vec<u32> = ids
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m == 1)
        .map(|(i, _)| *i)
        .collect();
    let runs = mask.windows(2).filter(|w| w[0] == 0 && w[1] == 1).count()
        + usize::from(mask.first() == Some(&1));
    (tok.decode(&masked, false).unwrap(), runs)
}

#[test]
fn chat_assistant_mask_chatml() {
    let tok = chatml_tokenizer();
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    let (ids, mask) = t.render_with_assistant_mask(&tok, &conv()).unwrap();
    assert_eq!(
        ids,
        tok.encode(&t.render(&conv(), false).unwrap(), false)
            .unwrap()
    );
    let (masked, runs) = split_by_mask(&tok, &ids, &mask);
    assert_eq!(masked, "The answer is 4.<|im_end|>");
    assert_eq!(runs, 1);
    // The unmasked prefix is exactly the prompt with its generation header.
    let n_prompt = mask.iter().position(|m| *m == 1).unwrap();
    assert_eq!(
        tok.decode(&ids[..n_prompt], false).unwrap(),
        t.render(&conv()[..2], true).unwrap()
    );
    // The trailing newline after <|im_end|> is template formatting, not assistant output.
    assert_eq!(*mask.last().unwrap(), 0);

    // Two assistant turns: two runs, each content + end token.
    let mut msgs = conv();
    msgs.push(Message::new(Role::User, "And 3 plus 3?"));
    msgs.push(Message::new(Role::Assistant, "6"));
    let (ids, mask) = t.render_with_assistant_mask(&tok, &msgs).unwrap();
    let (masked, runs) = split_by_mask(&tok, &ids, &mask);
    assert_eq!(masked, "The answer is 4.<|im_end|>6<|im_end|>");
    assert_eq!(runs, 2);
}

#[test]
fn chat_assistant_mask_smollm2_default_system() {
    let tok = chatml_tokenizer().with_chat_template(Some(SMOLLM2.to_string()));
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    let msgs = vec![
        Message::new(Role::User, "Capital of France?"),
        Message::new(Role::Assistant, "Paris is the capital of France."),
    ];
    let (ids, mask) = t.render_with_assistant_mask(&tok, &msgs).unwrap();
    let (masked, runs) = split_by_mask(&tok, &ids, &mask);
    assert_eq!(masked, "Paris is the capital of France.<|im_end|>");
    assert_eq!(runs, 1);
    assert!(tok
        .decode(&ids, false)
        .unwrap()
        .starts_with("<|im_start|>system\nYou are a helpful AI assistant named SmolLM"));
}

#[test]
fn chat_assistant_mask_llama3() {
    let tok = llama3_tokenizer(LLAMA3);
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    let msgs = vec![
        Message::new(Role::User, "What is the capital of France?"),
        Message::new(Role::Assistant, "  Paris is the capital of France. "),
    ];
    let (ids, mask) = t.render_with_assistant_mask(&tok, &msgs).unwrap();
    assert_eq!(
        ids[0],
        tok.token_to_id("<|begin_of_text|>").unwrap(),
        "BOS written once, by the template"
    );
    assert_ne!(ids[1], ids[0]);
    let (masked, runs) = split_by_mask(&tok, &ids, &mask);
    // The template trims the content; the mask follows what was rendered.
    assert_eq!(masked, "Paris is the capital of France.<|eot_id|>");
    assert_eq!(runs, 1);
    let n_prompt = mask.iter().position(|m| *m == 1).unwrap();
    assert_eq!(
        tok.decode(&ids[..n_prompt], false).unwrap(),
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is the capital of France?<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
    );

    // The Llama 3.1-style template too.
    let tok = llama3_tokenizer(LLAMA31);
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    let (ids, mask) = t.render_with_assistant_mask(&tok, &msgs).unwrap();
    let (masked, runs) = split_by_mask(&tok, &ids, &mask);
    assert_eq!(masked, "Paris is the capital of France.<|eot_id|>");
    assert_eq!(runs, 1);
}

#[test]
fn chat_assistant_mask_for_a_template_that_rewrites_history() {
    // Qwen3-style: earlier assistant turns lose their reasoning, so prefixes are not stable;
    // the in-order search still finds the final answer.
    let src = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['role'] == 'assistant' and not loop.last %}{{ m['content'].split('</think>')[-1].strip() }}{% else %}{{ m['content'] }}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
    let tok = chatml_tokenizer().with_chat_template(Some(src.to_string()));
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    let msgs = vec![
        Message::new(Role::User, "2 plus 2?"),
        Message::new(Role::Assistant, "<think>easy</think>4"),
        Message::new(Role::User, "3 plus 3?"),
        Message::new(Role::Assistant, "<think>also easy</think>6"),
    ];
    let (ids, mask) = t.render_with_assistant_mask(&tok, &msgs).unwrap();
    let (masked, runs) = split_by_mask(&tok, &ids, &mask);
    // The earlier turn was rendered without its reasoning; the mask covers what was rendered.
    assert_eq!(masked, "4<|im_end|><think>also easy</think>6<|im_end|>");
    assert_eq!(runs, 2);
}

#[test]
fn chat_format_prompt_for_datasets() {
    let t = ChatTemplate::chatml();
    let p = Prompt::Text("What is 6 times 7?".into());
    assert_eq!(
        t.format_prompt(&p, None, false).unwrap(),
        "<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        t.format_prompt(&p, Some("You are a careful math tutor."), true).unwrap(),
        format!(
            "<|im_start|>system\nYou are a careful math tutor.\n\n{REASONING_INSTRUCTION}<|im_end|>\n\
             <|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n"
        )
    );
    assert_eq!(
        t.format_prompt(&p, None, true).unwrap(),
        format!("<|im_start|>system\n{REASONING_INSTRUCTION}<|im_end|>\n<|im_start|>user\nWhat is 6 times 7?<|im_end|>\n<|im_start|>assistant\n")
    );
    assert!(
        REASONING_INSTRUCTION.contains("<think>") && REASONING_INSTRUCTION.contains("</think>")
    );
    // A prompt that has its own system message keeps it; `system` is only a default.
    let conv = Prompt::Messages(vec![
        Message::new(Role::System, "Own."),
        Message::new(Role::User, "Hi"),
    ]);
    let msgs = prompt_messages(&conv, Some("Default."), false);
    assert_eq!(
        msgs,
        vec![
            Message::new(Role::System, "Own."),
            Message::new(Role::User, "Hi")
        ]
    );
}

#[test]
fn chat_missing_template_is_a_clear_error() {
    let tok = chatml_tokenizer().with_chat_template(None);
    let err = ChatTemplate::from_tokenizer(&tok).unwrap_err();
    assert!(matches!(err, ChatError::NoTemplate { .. }));
    assert!(err.to_string().contains("chat_template"), "{err}");
}

/// Issue 19 row 6: a chat template with nested loops (from a model's tokenizer_config.json) is
/// stopped by the fuel limit with an error naming the tokenizer's files and the limit, in bounded
/// time; one that multiplies its output is stopped by the output limit. Real templates are far
/// below both (the tests above render them).
#[test]
fn runaway_templates_stop_at_the_fuel_and_output_limits() {
    let dir = std::env::temp_dir().join(format!("keel-io-chat-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    chatml_tokenizer().save(&dir).unwrap();
    let nested = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}done";
    let cfg: serde_json::Value = serde_json::json!({ "chat_template": nested, "eos_token": "<|im_end|>" });
    std::fs::write(dir.join("tokenizer_config.json"), cfg.to_string()).unwrap();
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let t = ChatTemplate::from_tokenizer(&tok).unwrap();
    let t0 = std::time::Instant::now();
    let err = t.render(&[Message::new(Role::User, "hi")], true).unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(err, ChatError::Limit { .. }), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.join("tokenizer.json").display().to_string()), "{msg}");
    assert!(msg.contains(&keel_model::chat::TEMPLATE_FUEL.to_string()), "{msg}");
    assert!(took.as_secs_f64() < 10.0, "fuel ran out after {took:?}");
    println!("fuel limit ({}) reached after {took:?}", keel_model::chat::TEMPLATE_FUEL);

    // Output: each message written 100,000 times.
    let loud = ChatTemplate::new(
        "{% for i in range(100000) %}{% for m in messages %}{{ m.content }}{% endfor %}{% endfor %}",
        "loud.jinja",
        "",
        "",
    )
    .unwrap();
    let messages = [Message::new(Role::User, "x".repeat(1000))];
    let err = loud.render(&messages, false).unwrap_err();
    let limit = keel_model::chat::max_render_bytes(&messages);
    assert_eq!(limit, (1 << 20) + 8 * 1000);
    let msg = err.to_string();
    assert!(matches!(err, ChatError::Limit { .. }) && msg.contains("loud.jinja"), "{msg}");
    assert!(msg.contains(&format!("exceeded {limit} bytes")), "{msg}");
    // Below the limit the same template renders in full.
    let quiet = ChatTemplate::new(
        "{% for i in range(1000) %}{% for m in messages %}{{ m.content }}{% endfor %}{% endfor %}",
        "quiet.jinja",
        "",
        "",
    )
    .unwrap();
    assert_eq!(quiet.render(&messages, false).unwrap().len(), 1_000_000);
    std::fs::remove_dir_all(&dir).ok();
}
