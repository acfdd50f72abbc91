//! Every pricing rule with a worked example from the provider's published price page, on the
//! built-in table (the catalog with Tally's corrections). Amounts are rounded to a
//! micro-dollar, because the products are not exact in binary.

use tally_ingest::Tokens;

use super::{Price, PricingTable, Usage};

fn table() -> PricingTable {
    PricingTable::builtin().expect("the built-in table parses")
}

fn usd(v: f64) -> f64 {
    (v * 1e6).round() / 1e6
}

fn tokens(prompt: u64, completion: u64) -> Tokens {
    Tokens {
        prompt,
        completion,
        ..Tokens::default()
    }
}

fn bill(provider: &str, model: &str, u: &Usage) -> f64 {
    usd(table()
        .bill(provider, model, u)
        .unwrap_or_else(|| panic!("{provider}/{model} is priced")))
}

/// developers.openai.com/api/docs/pricing: gpt-4o-2024-05-13 is $5 / $15 per 1M, gpt-4o
/// (2024-08-06 and later) $2.50 / $10. The snapshot keeps its own price.
#[test]
fn a_dated_snapshot_keeps_its_own_price() {
    let m = tokens(1_000_000, 1_000_000);
    assert_eq!(bill("openai", "gpt-4o-2024-05-13", &Usage::tokens(m)), 20.0);
    assert_eq!(bill("openai", "gpt-4o", &Usage::tokens(m)), 12.5);
    assert_eq!(bill("openai", "gpt-4o-2024-08-06", &Usage::tokens(m)), 12.5);
}

/// The models the issue found unpriced: claude-sonnet-4-6 $3 / $15, claude-opus-4-6 $5 / $25
/// (platform.claude.com/docs/en/about-claude/pricing), gpt-5.2 $1.75 / $14 (OpenAI's page).
#[test]
fn current_models_are_priced() {
    let m = Usage::tokens(tokens(1_000_000, 1_000_000));
    assert_eq!(bill("anthropic", "claude-sonnet-4-6", &m), 18.0);
    assert_eq!(bill("anthropic", "claude-opus-4-6", &m), 30.0);
    assert_eq!(bill("openai", "gpt-5.2", &m), 15.75);
}

/// ai.google.dev/gemini-api/docs/pricing, Gemini 2.5 Pro: input $1.25 (prompts <= 200k
/// tokens) or $2.50 (> 200k), output $10 or $15. The whole request is billed at the tier
/// its prompt falls in.
#[test]
fn a_long_prompt_is_billed_at_the_long_context_tier() {
    let short = Usage::tokens(tokens(100_000, 10_000));
    let long = Usage::tokens(tokens(300_000, 10_000));
    assert_eq!(bill("gemini", "gemini-2.5-pro", &short), 0.225); // 0.1×1.25 + 0.01×10
    assert_eq!(bill("gemini", "gemini-2.5-pro", &long), 0.9); // 0.3×2.50 + 0.01×15
    let exactly = Usage::tokens(tokens(200_000, 0));
    assert_eq!(
        bill("gemini", "gemini-2.5-pro", &exactly),
        0.25,
        "200k is not above 200k"
    );
    // Claude Sonnet 4's 1M window: $6 / $22.50 once the prompt passes 200k.
    assert_eq!(
        bill("anthropic", "claude-sonnet-4", &long),
        usd(0.3 * 6.0 + 0.01 * 22.5)
    );
}

/// platform.claude.com/docs/en/about-claude/pricing: 5-minute cache writes cost 1.25× base
/// input, 1-hour writes 2×, cache reads 0.1×. Sonnet 4.6: $3.75, $6 and $0.30 per 1M.
#[test]
fn one_hour_cache_writes_cost_twice_the_input() {
    let t = Tokens {
        prompt: 20_000,
        cache_read: 5_000,
        cache_write: 10_000,
        cache_write_1h: 4_000,
        completion: 1_000,
        ..Tokens::default()
    };
    let expected = 5_000.0 * 3.0 + 5_000.0 * 0.30 + 6_000.0 * 3.75 + 4_000.0 * 6.0 + 1_000.0 * 15.0;
    assert_eq!(
        bill("anthropic", "claude-sonnet-4-6", &Usage::tokens(t)),
        usd(expected / 1e6)
    );
    // More 1-hour writes reported than writes: clamped, never billed twice.
    let odd = Tokens {
        cache_write_1h: 50_000,
        ..t
    };
    let all_1h = 5_000.0 * 3.0 + 5_000.0 * 0.30 + 10_000.0 * 6.0 + 1_000.0 * 15.0;
    assert_eq!(
        bill("anthropic", "claude-sonnet-4-6", &Usage::tokens(odd)),
        usd(all_1h / 1e6)
    );
}

/// OpenAI's page, gpt-5: standard $1.25 / $10, flex $0.625 / $5, priority $2.50 / $20, batch
/// $0.625 / $5. The tier comes from the response's `service_tier`; `default` and tiers the
/// table does not know are standard.
#[test]
fn the_service_tier_sets_the_rates() {
    let m = tokens(1_000_000, 1_000_000);
    let at = |tier| Usage {
        tokens: m,
        service_tier: Some(tier),
        ..Usage::default()
    };
    assert_eq!(bill("openai", "gpt-5", &at("flex")), 5.625);
    assert_eq!(bill("openai", "gpt-5", &at("priority")), 22.5);
    assert_eq!(bill("openai", "gpt-5", &at("batch")), 5.625);
    assert_eq!(bill("openai", "gpt-5", &at("default")), 11.25);
    assert_eq!(bill("openai", "gpt-5", &at("scale")), 11.25);
    // Gemini's priority tier has its own long-context rates: $4.50 input above 200k.
    let long = Usage {
        tokens: tokens(300_000, 0),
        service_tier: Some("priority"),
        ..Usage::default()
    };
    assert_eq!(bill("gemini", "gemini-2.5-pro", &long), usd(0.3 * 4.5));
}

/// Anthropic's page: web search is $10 per 1,000 searches, on top of the tokens.
#[test]
fn web_search_calls_are_billed_per_call() {
    let u = Usage {
        tokens: tokens(1_000_000, 0),
        service_tier: None,
        web_search_calls: 3,
        ..Usage::default()
    };
    assert_eq!(bill("anthropic", "claude-sonnet-4-6", &u), 3.03);
}

/// docs.mistral.ai/models/mistral-large-3-25-12: `mistral-large-latest` is Mistral Large 3,
/// $0.50 / $1.50, not the older Large 2.1 ($2 / $6) that `mistral-large-2411` names.
/// `-latest` is never stripped to reach an older entry.
#[test]
fn latest_aliases_resolve_to_what_is_served_now_or_stay_unpriced() {
    let m = Usage::tokens(tokens(1_000_000, 1_000_000));
    assert_eq!(bill("mistral", "mistral-large-latest", &m), 2.0);
    assert_eq!(bill("mistral", "mistral-large-2411", &m), 8.0);
    let mut t = PricingTable::default();
    t.insert(
        "acme",
        Price {
            input: 1.0,
            output: 1.0,
            ..Price::default()
        },
    );
    assert!(t.lookup("acme", "acme-latest").is_none());
    assert!(t.lookup("acme", "acme-2025-01-01").is_some());
}

/// OpenAI's page: whisper-1 is $0.006 a minute, tts-1 $15 per 1M characters.
#[test]
fn units_by_the_second_and_the_character() {
    use crate::formats::Units;
    let t = table();
    let minute = Units::AudioSeconds {
        seconds: 60.0,
        estimated: false,
    };
    assert_eq!(
        t.unit_cost("openai", "whisper-1", &minute).map(usd),
        Some(0.006)
    );
    assert_eq!(
        t.unit_cost("openai", "tts-1", &Units::Characters(1_000_000))
            .map(usd),
        Some(15.0)
    );
}

/// Tally's corrections replace catalog entries whole, so one that says what the catalog says
/// only hides the catalog's later fixes (and its tiers): every correction must differ.
#[test]
fn every_correction_differs_from_the_catalog() {
    let catalog = {
        let mut t = PricingTable::default();
        t.extend_litellm(super::CATALOG).expect("catalog");
        t
    };
    let corrections: toml::Table = toml::from_str(super::CORRECTIONS).expect("toml");
    let models = corrections["models"].as_table().expect("models");
    for (key, _) in models {
        let mine = table().models[&key.to_ascii_lowercase()].clone();
        if let Some(theirs) = catalog.models.get(&key.to_ascii_lowercase()) {
            assert_ne!(&mine, theirs, "prices.toml's {key:?} repeats the catalog");
        }
        // A bare name the catalog also lists under its own provider's prefix is never
        // reached for that provider (`provider/model` is looked up first).
        for provider in ["mistral", "xai", "deepseek", "groq", "gemini"] {
            let shadow = format!("{provider}/{}", key.to_ascii_lowercase());
            assert!(
                key.contains('/') || !catalog.models.contains_key(&shadow),
                "prices.toml's {key:?} is shadowed by the catalog's {shadow:?}: key it so"
            );
        }
    }
}

#[test]
fn the_catalog_says_where_it_came_from_and_when() {
    let t = table();
    let source = t.source().expect("dated");
    assert!(
        source.contains("litellm") && source.contains("generated 20"),
        "{source}"
    );
    assert!(t.len() > 1_500, "{} models", t.len());
}

/// api-docs.deepseek.com/quick_start/pricing, as the catalog has it: deepseek-v4-pro is $1.32
/// input and $3.96 output per 1M, and half that off-peak, which is 00:00–01:00, 04:00–06:00
/// and 10:00–24:00 UTC on weekdays and all of Saturday and Sunday. By the request's start.
#[test]
fn off_peak_hours_have_their_own_rates() {
    let at = |ms| Usage {
        tokens: tokens(1_000_000, 1_000_000),
        at_ms: Some(ms),
        ..Usage::default()
    };
    let friday_0430 = 1_796_358_600_000;
    let friday_0800 = 1_796_371_200_000;
    let saturday_noon = 1_796_472_000_000;
    let friday_2359 = 1_796_428_740_000;
    assert_eq!(bill("deepseek", "deepseek-v4-pro", &at(friday_0800)), 5.28);
    assert_eq!(bill("deepseek", "deepseek-v4-pro", &at(friday_0430)), 2.64);
    assert_eq!(
        bill("deepseek", "deepseek-v4-pro", &at(saturday_noon)),
        2.64
    );
    assert_eq!(bill("deepseek", "deepseek-v4-pro", &at(friday_2359)), 2.64);
    // Without a time (an explanation of the price alone), the base rates.
    let untimed = Usage::tokens(tokens(1_000_000, 1_000_000));
    assert_eq!(bill("deepseek", "deepseek-v4-pro", &untimed), 5.28);
}

/// docs.fireworks.ai/guides/prompt-caching: cached prompt tokens of serverless models cost
/// half the input price unless the model lists its own cached price.
#[test]
fn fireworks_cache_reads_cost_half_the_input() {
    let t = Tokens {
        prompt: 1_000_000,
        cache_read: 400_000,
        ..Tokens::default()
    };
    let table = table();
    let (_, p) = table
        .lookup_entry("fireworks", "accounts/fireworks/models/code-llama-7b")
        .expect("priced");
    let expected = (600_000.0 * p.input + 400_000.0 * p.input / 2.0) / 1e6;
    assert_eq!(
        bill(
            "fireworks",
            "accounts/fireworks/models/code-llama-7b",
            &Usage::tokens(t)
        ),
        usd(expected)
    );
}
