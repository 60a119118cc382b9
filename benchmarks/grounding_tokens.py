"""Token counts of Qwen-VL box text with and without ``model.llm.grounding_tokens`` (docs/grounding.md).

Counts the tokens the packaged SmolLM2 tokenizer gives a bare box and a referring answer, before and after
the four tags are added the way the recipe option adds them, and checks that decoding (as the generation
engine decodes, ``skip_special_tokens=True``) gives the text back.

    .venv/bin/python benchmarks/grounding_tokens.py
"""

from __future__ import annotations

from tokenizers import AddedToken
from transformers import AutoTokenizer

from omnifuse.assets import AssetKind, resolve
from omnifuse.llm.grounding_tokens import TAGS

TEXTS = (
    "<box>(123,456),(789,999)</box>",
    "<ref>the small red circle</ref><box>(123,456),(789,999)</box>",
)


def main() -> None:
    tok = AutoTokenizer.from_pretrained(resolve("smollm2-135m-instruct", AssetKind.LLM, progress=False))
    before = [len(tok.encode(t, add_special_tokens=False)) for t in TEXTS]
    size = len(tok)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])  # as the option does
    print(f"tokenizer: {size} -> {len(tok)} tokens")
    for text, n in zip(TEXTS, before, strict=True):
        ids = tok.encode(text, add_special_tokens=False)
        same = tok.decode(ids, skip_special_tokens=True) == text
        print(f"{text!r}: {n} -> {len(ids)} tokens; decodes to the same text: {same}")


if __name__ == "__main__":
    main()
