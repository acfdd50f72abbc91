"""Writes privacy/tests/fixtures/faker.jsonl: values Faker generates, each planted in a chat
message as a JSON string, and text that holds none (dates, times, ids, versions, hashes,
prices). The privacy crate's corpus test measures recall and false positives on it.

    python3 -m venv /tmp/fk && /tmp/fk/bin/pip install faker==40.63.0
    /tmp/fk/bin/python scripts/privacy/corpus.py > privacy/tests/fixtures/faker.jsonl
"""
import json
import sys

import faker

N = 50
LOCALES = ["en_US", "en_GB", "de_DE", "fr_FR"]
TEMPLATES = [
    "Please reach me at {v} tomorrow.",
    "{v}",
    "My details:\n- {v}\n- thanks",
    "Is \"{v}\" correct?",
]


def message(text):
    return json.dumps({"role": "user", "content": text})


def main():
    out = sys.stdout
    out.write(json.dumps({"faker": faker.VERSION}) + "\n")
    for loc in LOCALES:
        f = faker.Faker(loc)
        f.seed_instance(20261204)
        kinds = {
            "email": f.email,
            "phone": f.phone_number,
            "card": lambda: f.credit_card_number(
                card_type=f.random_element(["visa", "mastercard", "amex", "discover"])
            ),
            "iban": f.iban,
            "ip": lambda: f.ipv4_public() if f.boolean() else f.ipv6(),
        }
        if loc == "en_US":
            kinds["ssn"] = f.ssn
        negatives = [
            lambda: f.date(),
            lambda: f.time(),
            lambda: f.iso8601(),
            lambda: f.uuid4(),
            lambda: f.sha256(),
            lambda: f.isbn13(),
            lambda: f.ean13(),
            lambda: f.postcode(),
            lambda: f.pricetag(),
            lambda: f"v{f.numerify('#.##.#')}",
            lambda: f.numerify("order ##########"),
            lambda: f.numerify("part ##-###"),
            lambda: f.file_path(depth=3),
            lambda: f.url(),
            lambda: f.user_name(),
            lambda: f.sentence(nb_words=12),
            lambda: f.numerify("##:##:##.###"),
            lambda: f.numerify("#,###,###.##"),
        ]
        for kind, gen in kinds.items():
            for i in range(N):
                v = gen()
                text = TEMPLATES[i % len(TEMPLATES)].format(v=v)
                out.write(json.dumps({"locale": loc, "kind": kind, "value": v, "body": message(text)}) + "\n")
        for i in range(N * 4):
            v = negatives[i % len(negatives)]()
            text = TEMPLATES[i % len(TEMPLATES)].format(v=v)
            out.write(json.dumps({"locale": loc, "kind": "none", "value": v, "body": message(text)}) + "\n")


main()
