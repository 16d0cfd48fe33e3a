"""Tests for governance_reports: the self-contained HTML audit report."""
from __future__ import annotations

import base64
import re
from pathlib import Path

import numpy as np
import pytest

from governance_reports import png_bytes, render_report
from governance_reports.images import PNG_SIGNATURE, data_uri
from governance_reports.report import MAX_TABLE_ROWS

INJECTION = "<script>alert(1)</script>.png"


def _image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:64j, -1:1:64j]
    return np.clip((xx ** 2 + yy ** 2 < 0.6) * 0.7 + rng.uniform(0, 0.3, (64, 64)), 0, 1)


def _evidence(i: int, label: str = "duplicate") -> dict:
    img = _image(i)
    return {"candidate_id": f"cand/evid_{i:03d}.png", "candidate_png": png_bytes(np.fliplr(img)),
            "nearest_id": f"train/near_{i:03d}.png", "nearest_png": png_bytes(img),
            "score": 0.95 - 0.01 * i, "embedding_score": 0.93 - 0.01 * i, "label": label,
            "alignment": "flip lr, rot 0°, shift (0, 0)"}


def _row(i: int, score: float) -> dict:
    label = "duplicate" if score > 0.91 else "similar" if score > 0.63 else "different"
    return {"image_id": f"cand/img_{i:04d}.png", "source_path": f"/data/cand/img_{i:04d}.png",
            "label": label, "score": score, "embedding_score": score, "nearest_id": f"train/t_{i}.png",
            "nearest_path": f"/data/train/t_{i}.png", "verified": label == "duplicate"}


def _context(verdict: str = "fail", n_rows: int = 20, evidence: int = 3) -> dict:
    rows = [_row(i, s) for i, s in enumerate(np.linspace(0.1, 0.99, n_rows))]
    thresholds = {"similar": 0.63, "duplicate": 0.91, "source": "calibrated on holdout-42"}
    summary = {
        "verdict": verdict, "reason": f"gate said {verdict}",
        "counts": {"duplicate": 2, "similar": 5, "different": n_rows - 7, "quarantined": 1},
        "volume_counts": {"duplicate": 1, "similar": 0, "different": 0},
        "thresholds": thresholds, "policy": {"fail_on_duplicate": True, "max_similar_fraction": 0.2},
        "model": {"model_id": "model-abc", "sha256": "f" * 64, "metrics": {"val_mae": 0.04}},
        "cohort": {"name": "cohort-x", "images": 497},
        "settings": {"top_k": 5, "thresholds": thresholds},
        "versions": {"deepssim": "0.1.0", "torch": "2.13.0"},
        "run": {"audit_id": "audit-123", "started_at": "2025-01-01T00:00:00Z",
                "finished_at": "2025-01-01T00:01:00Z", "candidate_root": "/data/cand"},
        "complete": True,
    }
    return {
        "summary": summary, "verdicts": rows, "best_scores": [r["score"] for r in rows],
        "volumes": [{"volume_id": "vol/a.nii.gz", "slices": 10, "duplicate_slices": 1, "similar_slices": 2,
                     "worst_label": "duplicate", "best_score": 0.97, "best_match": "train/t_1.png"}],
        "quarantine": [{"source_path": "cand/broken.dcm", "reason": "unreadable DICOM"}],
        "validation": {"success": False, "expectations": [
            {"name": "expect_unique_image_id", "success": True, "unexpected_count": 0},
            {"name": "expect_foreground", "success": False, "unexpected_count": 3}]},
        "evidence": [_evidence(i) for i in range(evidence)],
    }


def _render(tmp_path: Path, context: dict) -> str:
    out = render_report(context, tmp_path / "nested" / "report.html")
    assert out == tmp_path / "nested" / "report.html" and out.is_file()
    return out.read_text(encoding="utf-8")


def _section(html: str, section_id: str) -> str:
    """One <section> of the report, with the <wbr> break hints of paths removed."""
    html = html.replace("<wbr>", "")
    match = re.search(rf'<section id="{section_id}".*?</section>', html, re.S)
    assert match, f"section {section_id} missing"
    return match.group(0)


def test_fail_banner_and_every_evidence_id(tmp_path):
    ctx = _context("fail", evidence=4)
    html = _render(tmp_path, ctx)
    banner = re.search(r'<div class="banner banner-(\w+)"[^>]*>\s*<div class="word">(\w+)</div>', html)
    assert banner and banner.groups() == ("fail", "FAIL")
    assert "gate said fail" in html
    evidence = _section(html, "evidence")
    for e in ctx["evidence"]:
        assert e["candidate_id"] in evidence and e["nearest_id"] in evidence
    assert evidence.count("<img ") == 2 * len(ctx["evidence"])


@pytest.mark.parametrize("verdict, word", [("pass", "PASS"), ("error", "ERROR"), ("bogus", "ERROR")])
def test_banner_colour_class_follows_verdict(tmp_path, verdict, word):
    html = _render(tmp_path, _context(verdict))
    key = word.lower()
    assert f'class="banner banner-{key}"' in html and f'<div class="word">{word}</div>' in html


def test_self_contained_no_urls_and_data_uri_images(tmp_path):
    html = _render(tmp_path, _context())
    assert "http://" not in html and "https://" not in html
    assert "<script" not in html.lower() and "<link" not in html.lower()
    assert not re.search(r"\burl\(", html)  # no CSS fetches either
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) == 1 + 2 * 3  # histogram + three evidence pairs
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)


def test_html_injection_in_file_names_is_escaped(tmp_path):
    ctx = _context()
    ctx["verdicts"][-1].update(image_id=INJECTION, source_path="/x/" + INJECTION, nearest_path=INJECTION)
    ctx["evidence"][0].update(candidate_id=INJECTION, alignment=INJECTION, label='"><b onmouseover=x>')
    ctx["quarantine"].append({"source_path": "dir/" + INJECTION, "reason": INJECTION})
    ctx["volumes"][0]["volume_id"] = INJECTION
    ctx["validation"]["expectations"][0]["name"] = INJECTION
    ctx["summary"]["reason"] = INJECTION
    ctx["summary"]["settings"]["root"] = INJECTION
    html = _render(tmp_path, ctx)
    assert "<script" not in html.lower()
    assert "onmouseover=x>" not in html
    assert "&lt;script&gt;alert(1)&lt;" in html
    assert "chip-other" in html  # an unknown label never becomes a raw CSS class


def test_thresholds_and_provenance(tmp_path):
    prov = _section(_render(tmp_path, _context()), "provenance")
    for text in ("0.63", "0.91", "calibrated on holdout-42", "model-abc", "f" * 64, "cohort-x",
                 "audit-123", "2025-01-01T00:01:00Z", "2.13.0", "max_similar_fraction", "top_k"):
        assert text in prov, text


def test_empty_evidence_renders(tmp_path):
    ctx = _context(evidence=0)
    html = _render(tmp_path, ctx)
    assert "No evidence pairs" in _section(html, "evidence")
    assert "<img" not in _section(html, "evidence")


def test_missing_optional_keys_render(tmp_path):
    ctx = _context("pass")
    for key in ("volumes", "quarantine", "evidence", "validation", "best_scores"):
        ctx.pop(key)
    ctx["summary"].pop("validation", None)
    html = _render(tmp_path, ctx)
    assert "No volumes in this audit" in html and "No file was quarantined" in html
    assert "No validation results recorded" in html
    assert html.count("<img ") == 1  # histogram falls back to the verdict scores


def test_empty_context_renders_as_error(tmp_path):
    html = _render(tmp_path, {})
    assert 'class="banner banner-error"' in html and "No scores to plot" in html


def test_worst_table_is_capped_and_sorted(tmp_path):
    n = MAX_TABLE_ROWS + 50
    worst = _section(_render(tmp_path, _context(n_rows=n)), "worst")
    assert f"showing the top {MAX_TABLE_ROWS} of {n}" in worst
    assert worst.count("<tr>") == MAX_TABLE_ROWS + 1  # + header row
    assert worst.index(f"cand/img_{n - 1:04d}.png") < worst.index(f"cand/img_{n - 2:04d}.png")


def test_validation_and_counts_shown(tmp_path):
    html = _render(tmp_path, _context())
    validation = _section(html, "validation")
    assert "expect_foreground" in validation and "chip-bad" in validation
    counts = _section(html, "counts")
    assert "Per volume" in counts and "quarantined" in counts


def test_png_bytes_roundtrip_and_guards():
    from PIL import Image
    import io

    img = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    img[0, 0] = np.nan
    decoded = np.asarray(Image.open(io.BytesIO(png_bytes(img))))
    assert decoded.shape == (3, 4) and decoded.dtype == np.uint8
    assert decoded[0, 0] == 0 and decoded[-1, -1] == 255
    with pytest.raises(ValueError):
        png_bytes(np.zeros((2, 2, 3)))
    assert data_uri(b"<svg onload=x>") is None and data_uri(None) is None
