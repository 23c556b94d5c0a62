"""What the data preparation relies on in its frameworks beyond their documented API: each test fails when a
release changes it.

- ``compat.dataset_fingerprint`` (``Dataset._fingerprint``): the cache keys of the tokenized and packed stages.
- The chat-template syntax check before a tokenizer is loaded: the public ``apply_chat_template`` on a one-word
  stand-in tokenizer must judge a template exactly as a model's tokenizer does.
"""

from __future__ import annotations

import jinja2
import pytest
import tiny
from datasets import Dataset

from workbench.core.compat import dataset_fingerprint
from workbench.core.data import rendering
from workbench.core.errors import DataError


def _rows():
    yield from ({"text": f"row {i}"} for i in range(10))


def test_dataset_fingerprint_names_the_data_and_every_transform(tmp_path):
    first = Dataset.from_generator(_rows, cache_dir=str(tmp_path), fingerprint="rows-v1")
    again = Dataset.from_generator(_rows, cache_dir=str(tmp_path), fingerprint="rows-v1")  # read from the cache
    assert dataset_fingerprint(first) == dataset_fingerprint(again) == "rows-v1"
    assert again.cache_files == first.cache_files

    # A seeded split and a selection are the same transform each time, and each gives a new fingerprint.
    split = first.train_test_split(test_size=3, seed=7)
    same = again.train_test_split(test_size=3, seed=7)
    other = first.train_test_split(test_size=3, seed=8)
    train = dataset_fingerprint(split["train"])
    assert train == dataset_fingerprint(same["train"]) != dataset_fingerprint(other["train"])
    assert len({"rows-v1", train, dataset_fingerprint(split["test"])}) == 3
    assert dataset_fingerprint(first.select([0, 2])) != dataset_fingerprint(first.select([0, 3]))

    # The fingerprint a transform is given is the one it reports, which is what the next stage is keyed on.
    mapped = first.map(lambda row: {"n": len(row["text"])}, new_fingerprint="tokens-v1")
    assert dataset_fingerprint(mapped) == "tokens-v1"


TEMPLATES = {
    "ok": "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}",
    # What transformers adds to the sandbox: the generation tag, loop controls, tojson with indent, namespace,
    # raise_exception and strftime_now.
    "transformers features": (
        "{% set ns = namespace(n=0) %}{% for m in messages %}{% if m['role'] == 'tool' %}"
        "{{ raise_exception('no tools') }}{% endif %}{% generation %}{{ m['content'] | tojson(indent=2) }}"
        "{% endgeneration %}{% set ns.n = ns.n + 1 %}{% if ns.n > 5 %}{% break %}{% endif %}{% endfor %}"
        "{{ strftime_now('%Y') }}"
    ),
    "rejects every conversation": "{{ raise_exception('this template renders nothing') }}",
    "unclosed block": "{% for m in messages %}{{ m['content'] }}",
    "bad expression": "{% for m in messages %}{{ m['content'] }\n{% endfor %}",
    "unknown tag": "{% for m in messages %}{% frobnicate %}{% endfor %}",
    "unknown filter": "\n\n{{ messages | no_such_filter }}",
}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_the_syntax_check_judges_a_template_as_a_models_tokenizer_does(name):
    template = TEMPLATES[name]
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    try:
        tiny.make_tokenizer().apply_chat_template(probe, tokenize=False, chat_template=template)
        expected = None
    except jinja2.TemplateSyntaxError as exc:
        expected = f"data.chat_template: not a valid Jinja template: {exc.message} (line {exc.lineno})."
    except jinja2.TemplateError:
        expected = None  # it parses; rejecting conversations is reported per row
    if expected is None:
        rendering._check_template_syntax(template)
    else:
        with pytest.raises(DataError) as raised:
            rendering._check_template_syntax(template)
        assert str(raised.value).splitlines()[0] == expected
    assert (expected is None) == (name in ("ok", "transformers features", "rejects every conversation"))
