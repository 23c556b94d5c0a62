#!/usr/bin/env python3
"""Write the demo dataset: a sentence about a payment → the payment as one line of JSON.

    python resources/demo/make_data.py            # (re)write train.jsonl and validation.jsonl next to this file
    python resources/demo/make_data.py --check    # exit 1 if the files here differ from what the script writes
    python resources/demo/make_data.py --out DIR  # write somewhere else

Deterministic: standard library only, a fixed seed, no downloads; the same files on every machine and
Python version (``random.Random(seed)`` is stable across versions for the calls used here). See README.md
in this folder for the task and why it makes a good demo.

Each row is a chat (``messages``): the user asks for the fields of a payment sentence, the assistant answers
``{"name": "…", "date": "YYYY-MM-DD", "amount": 1200.50, "currency": "EUR"}``. The sentences vary the date
format (``March 14, 2024`` / ``14 March 2024`` / ``2024-03-14``), the currency notation (``$42.50``,
``42.50 dollars``, ``USD 42.50``; euros and pounds likewise), thousands separators and the phrasing, and
some carry distracting numbers (invoice numbers, quantities, room numbers). The validation rows use
first and last names that never occur in the training rows, so a falling validation loss means the model
learned to extract, not to remember people.
"""

from __future__ import annotations

import argparse
import calendar
import json
import random
import sys
from pathlib import Path

SEED = 20240314
TRAIN_ROWS = 1000
VALIDATION_ROWS = 32
INSTRUCTION = "Extract name, date, amount and currency as JSON: "

FIRST_NAMES = [
    "Aisha", "Alejandro", "Amara", "Anders", "Ana", "Arjun", "Beatriz", "Bilal", "Camille", "Chen", "Chiara",
    "Dmitri", "Elena", "Emeka", "Farah", "Felix", "Grace", "Hana", "Hugo", "Ines", "Ivan", "Jamal", "Jonas",
    "Julia", "Kai", "Karin", "Leila", "Liam", "Lucia", "Mateo", "Mei", "Nadia", "Noah", "Olga", "Omar", "Pablo",
    "Rosa", "Samir", "Sofia", "Tariq", "Ursula", "Valentina", "Wei", "Yara", "Yusuf", "Zanele", "Zoe", "Oscar",
]
LAST_NAMES = [
    "Abara", "Andersen", "Bauer", "Bianchi", "Costa", "Dubois", "Eriksen", "Fischer", "Garcia", "Haddad", "Ivanova",
    "Jensen", "Kaur", "Kowalski", "Larsen", "Moreau", "Nakamura", "Novak", "Okafor", "Park", "Petrov", "Quinn",
    "Rossi", "Santos", "Schmidt", "Silva", "Tanaka", "Torres", "Usman", "Vargas", "Weber", "Yilmaz", "Zhang",
    "Hughes", "Mensah", "Ortiz", "Lindqvist", "Moreno", "Sato", "Chowdhury",
]
# Held out of the training rows: validation uses only these (and the sample prompts use unseen names too).
VALIDATION_FIRST = {"Beatriz", "Emeka", "Karin", "Mei", "Omar", "Valentina", "Hugo", "Zanele"}
VALIDATION_LAST = {"Bianchi", "Haddad", "Novak", "Okafor", "Tanaka", "Vargas", "Lindqvist", "Mensah"}

# {name}, {amount} and {date} are filled in; "on {date}" reads well for every date format used.
TEMPLATES = [
    "{name} paid {amount} for concert tickets on {date}.",
    "On {date}, {name} transferred {amount} to a savings account.",
    "{name} was charged {amount} by the electricity company on {date}.",
    "A refund of {amount} was issued to {name} on {date}.",
    "{name} donated {amount} to the local animal shelter on {date}.",
    "On {date} {name} sent {amount} to the landlord.",
    "Invoice 4471: {name} owes {amount}, due on {date}.",
    "{name} bought 3 chairs for {amount} on {date}.",
    "Received {amount} from {name} on {date}, thank you!",
    "{name} withdrew {amount} from a cash machine on {date}.",
    "The gym billed {name} {amount} on {date} for a 12-month membership.",
    "On {date}, {name} tipped the delivery driver {amount}.",
    "{name} lent {amount} to a friend on {date}.",
    "Payment of {amount} received from {name} on {date} for order 2210.",
    "{name} spent {amount} on groceries on {date}.",
    "On {date}, {name} paid a parking fine of {amount}.",
    "{name} received a salary advance of {amount} on {date}.",
    "Booking confirmed for {name}: {amount} paid on {date}, room 204.",
    "{name} split a dinner bill of {amount} with 4 friends on {date}.",
    "Transfer of {amount} from {name}, dated {date}.",
    "{name} renewed 2 library cards for {amount} on {date}.",
    "On {date} the bank credited {amount} to {name}.",
]

# Spelled out rather than taken from calendar.month_name, which follows the process locale.
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

CURRENCIES = {
    # code: (symbol, word)
    "USD": ("$", "dollars"),
    "EUR": ("€", "euros"),
    "GBP": ("£", "pounds"),
}


def _date(rng: random.Random) -> tuple[str, str]:
    """(as written in the sentence, ISO 8601)."""
    year = rng.randint(2019, 2025)
    month = rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    iso = f"{year:04d}-{month:02d}-{day:02d}"
    name = MONTHS[month - 1]
    style = rng.choices(["mdy", "dmy", "iso"], weights=[45, 40, 15])[0]
    written = {"mdy": f"{name} {day}, {year}", "dmy": f"{day} {name} {year}", "iso": iso}[style]
    return written, iso


def _amount(rng: random.Random) -> tuple[str, str, str]:
    """(as written in the sentence, the JSON number, the currency code)."""
    code = rng.choice(sorted(CURRENCIES))
    symbol, word = CURRENCIES[code]
    low, high = rng.choice([(1, 99), (100, 999), (1000, 9999)])
    whole = rng.randint(low, high)
    cents = rng.randint(0, 99) if rng.random() < 0.5 else None
    number = f"{whole}" + (f".{cents:02d}" if cents is not None else "")
    grouped = f"{whole:,}" + (f".{cents:02d}" if cents is not None else "")
    style = rng.choices(["symbol", "word", "code"], weights=[50, 35, 15])[0]
    written = {"symbol": f"{symbol}{grouped}", "word": f"{grouped} {word}", "code": f"{code} {grouped}"}[style]
    return written, number, code


def answer(name: str, iso_date: str, number: str, code: str) -> str:
    """The target: one line of JSON, keys in a fixed order, the amount a JSON number as written (no separators)."""
    return f'{{"name": {json.dumps(name, ensure_ascii=False)}, "date": "{iso_date}", "amount": {number}, "currency": "{code}"}}'


def make_rows(rng: random.Random, count: int, first_names: list[str], last_names: list[str]) -> list[dict]:
    rows = []
    for _ in range(count):
        name = f"{rng.choice(first_names)} {rng.choice(last_names)}"
        written_date, iso = _date(rng)
        written_amount, number, code = _amount(rng)
        sentence = rng.choice(TEMPLATES).format(name=name, amount=written_amount, date=written_date)
        target = answer(name, iso, number, code)
        json.loads(target)  # every target is valid JSON
        rows.append({"messages": [
            {"role": "user", "content": INSTRUCTION + sentence},
            {"role": "assistant", "content": target},
        ]})
    return rows


def build() -> dict[str, str]:
    """{file name: file text} for the whole dataset."""
    rng = random.Random(SEED)
    train_first = [n for n in FIRST_NAMES if n not in VALIDATION_FIRST]
    train_last = [n for n in LAST_NAMES if n not in VALIDATION_LAST]
    train = make_rows(rng, TRAIN_ROWS, train_first, train_last)
    validation = make_rows(rng, VALIDATION_ROWS, sorted(VALIDATION_FIRST), sorted(VALIDATION_LAST))

    def jsonl(rows: list[dict]) -> str:
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)

    return {"train.jsonl": jsonl(train), "validation.jsonl": jsonl(validation)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    files = build()
    if args.check:
        stale = [n for n, text in files.items()
                 if not (args.out / n).is_file() or (args.out / n).read_text(encoding="utf-8") != text]
        if stale:
            print(f"out of date: {', '.join(stale)} (run {Path(__file__).name} to rewrite them)", file=sys.stderr)
            return 1
        print("demo data is up to date")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (args.out / name).write_text(text, encoding="utf-8", newline="\n")
        print(f"wrote {args.out / name} ({text.count(chr(10))} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
