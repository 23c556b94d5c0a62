"""Render Ollama Modelfile templates with Go's own ``text/template`` (the engine Ollama uses), for tests.

A small Go program (standard library only) is compiled once per session and fed JSON: the template and the
conversations. The data has Ollama's shape for chat templates: ``.Messages`` with ``.Role`` and ``.Content``.
Ollama itself inserts the Modelfile's ``SYSTEM`` text as the first message when a conversation has no system
message; ``ollama_messages`` does the same here, so the rendered string is the prompt Ollama would build.

Needs the Go toolchain (Debian's ``golang-go``); ``available()`` says whether it is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

_PROGRAM = r"""
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/template"
)

type Message struct {
	Role    string
	Content string
}

type Values struct {
	Messages []Message
}

type Job struct {
	Template      string      `json:"template"`
	Conversations [][]Message `json:"conversations"`
}

func main() {
	var job Job
	if err := json.NewDecoder(os.Stdin).Decode(&job); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	tmpl, err := template.New("modelfile").Parse(job.Template)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(3)
	}
	out := []string{}
	for _, c := range job.Conversations {
		var b strings.Builder
		if err := tmpl.Execute(&b, Values{Messages: c}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(4)
		}
		out = append(out, b.String())
	}
	json.NewEncoder(os.Stdout).Encode(out)
}
"""


def available() -> bool:
    return shutil.which("go") is not None


@lru_cache(maxsize=1)
def _binary() -> Path:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="workbench-gotemplate-"))
    (folder / "main.go").write_text(_PROGRAM, encoding="utf-8")
    env = {**os.environ, "GOCACHE": str(folder / "cache"), "GOPATH": str(folder / "gopath"), "GO111MODULE": "off",
           "GOFLAGS": "", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(folder / "render"), str(folder / "main.go")], check=True, env=env,
                   cwd=folder, capture_output=True, timeout=240)
    return folder / "render"


def render(template: str, conversations: list[list[dict[str, str]]]) -> list[str]:
    """Each conversation rendered by Go's text/template."""
    job = {"template": template,
           "conversations": [[{"Role": m["role"], "Content": m["content"]} for m in c] for c in conversations]}
    done = subprocess.run([str(_binary())], input=json.dumps(job).encode(), capture_output=True, check=True, timeout=60)
    return json.loads(done.stdout)


def ollama_messages(messages: list[dict[str, str]], system: str | None) -> list[dict[str, str]]:
    """The messages Ollama hands its template: the Modelfile's SYSTEM first when the conversation has none."""
    if system is not None and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return list(messages)


def parse_modelfile(text: str) -> dict[str, list[str]]:
    """Instructions of a Modelfile: name → values (triple-quoted values may span lines; JSON-quoted ones are
    decoded)."""
    out: dict[str, list[str]] = {}
    i, lines = 0, text.splitlines(keepends=True)
    while i < len(lines):
        line = lines[i]
        i += 1
        if not line.strip() or line.startswith("#"):
            continue
        name, _, rest = line.partition(" ")
        rest = rest.rstrip("\n")
        if rest.startswith('"""'):
            value = rest[3:]
            while not value.endswith('"""'):
                value += "\n" + lines[i].rstrip("\n")
                i += 1
            value = value[:-3]
        else:
            value = rest
        out.setdefault(name, []).append(value)
    return out
