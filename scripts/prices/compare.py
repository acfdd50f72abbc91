#!/usr/bin/env python3
"""Tally's cost against LiteLLM's `cost_per_token`, for every model of Tally's catalog.

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install litellm==1.110.2
    cargo build --release
    LITELLM_LOCAL_MODEL_COST_MAP=True /tmp/llvenv/bin/python scripts/prices/compare.py target/release/tally

Prints a Markdown summary and the models whose costs differ by more than 1 %, for three
usages: a plain request, a long prompt with cache reads (past every long-context threshold),
and the same plain request under the `flex` service tier. PRICING.md records a run and says,
for each difference, which side is right. LiteLLM must use its packaged price file
(LITELLM_LOCAL_MODEL_COST_MAP=True), the one the catalog was generated from.
"""

import collections
import json
import os
import subprocess
import sys

import litellm

TALLY = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
CATALOG = json.load(open(os.path.join(HERE, "../../proxy/src/pricing/catalog.json")))
RENAMED = {"together_ai": "together", "fireworks_ai": "fireworks", "vertex_ai": "vertex"}
PROVIDER = {"text-completion-openai": "openai", "bedrock_converse": "bedrock", "azure_text": "azure"}

SCENARIOS = {
    "plain": dict(prompt=1000, completion=500, cache_read=0, tier=None),
    "long+cache": dict(prompt=300_000, completion=1000, cache_read=50_000, tier=None),
    "flex": dict(prompt=1000, completion=500, cache_read=0, tier="flex"),
}


def tally_name(key, entry):
    """The provider and model a request would name, for a catalog key."""
    if "/" in key:
        prefix, rest = key.split("/", 1)
        if prefix in RENAMED or prefix in ("gemini", "azure", "bedrock", "mistral", "deepseek", "xai", "groq", "openai", "anthropic"):
            return RENAMED.get(prefix, prefix), rest
    p = entry.get("litellm_provider") or "openai"
    p = p.split("-")[0] if p.startswith("vertex_ai") else p
    return RENAMED.get(p, PROVIDER.get(p, p)), key


def tally_costs(provider, models, s):
    usage = f"prompt={s['prompt']},completion={s['completion']},cache_read={s['cache_read']}"
    args = [TALLY, "prices", "show", "--json", "--provider", provider, "--usage", usage]
    if s["tier"]:
        args += ["--tier", s["tier"]]
    out = subprocess.run(args + ["--"] + models, capture_output=True, text=True, check=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def litellm_cost(key, s):
    try:
        from litellm.types.utils import PromptTokensDetailsWrapper, Usage
        u = Usage(prompt_tokens=s["prompt"], completion_tokens=s["completion"],
                  total_tokens=s["prompt"] + s["completion"],
                  prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=s["cache_read"]))
        a, b = litellm.cost_per_token(model=key, usage_object=u, service_tier=s["tier"])
        return a + b
    except Exception as e:  # noqa: BLE001 - LiteLLM raises anything for a model it cannot price
        return f"error: {type(e).__name__}"


def main():
    chat = {k: v for k, v in CATALOG.items()
            if k != "_tally" and v.get("mode") in ("chat", "completion", "responses", None)
            and "input_cost_per_token" in v and "output_cost_per_token" in v}
    by_provider = collections.defaultdict(list)
    for key, entry in chat.items():
        provider, model = tally_name(key, entry)
        by_provider[provider].append((key, model))
    rows = []
    for name, s in SCENARIOS.items():
        for provider, items in sorted(by_provider.items()):
            got = tally_costs(provider, [m for _, m in items], s)
            for (key, model), t in zip(items, got):
                rows.append((name, key, provider, model, t.get("entry"), t.get("cost_usd"), litellm_cost(key, s)))
    print(f"{len(chat)} chat models; usages: " + "; ".join(f"{n} {s}" for n, s in SCENARIOS.items()))
    print()
    print("| usage | same (within 1 %) | differ | Tally unpriced | LiteLLM error |")
    print("|---|---|---|---|---|")
    diffs = []
    for name in SCENARIOS:
        same = differ = t_none = l_err = 0
        for r in (r for r in rows if r[0] == name):
            _, key, provider, model, entry, t, l = r
            if isinstance(l, str):
                l_err += 1
            elif t is None:
                t_none += 1
                diffs.append(r)
            elif abs(t - l) <= 0.01 * max(abs(l), 1e-12):
                same += 1
            else:
                differ += 1
                diffs.append(r)
        print(f"| {name} | {same} | {differ} | {t_none} | {l_err} |")
    print()
    print("| usage | catalog key | Tally entry | Tally $ | LiteLLM $ |")
    print("|---|---|---|---|---|")
    for name, key, provider, model, entry, t, l in diffs:
        print(f"| {name} | `{key}` | `{entry}` | {t} | {l} |")


if __name__ == "__main__":
    main()
