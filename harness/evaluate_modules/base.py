"""The `evaluate.Metric` behind harness's local evaluate modules (rouge/, bleu/, chrf/): each module file only names
its metric; the numbers come from harness/metrics/generation.py."""

import datasets
import evaluate

from harness.metrics import generation

DESCRIPTIONS = {
    "rouge": "ROUGE-1/2/L/Lsum with rouge-score's semantics (Porter stemmer; Lsum over one sentence per line, "
    "sentences split offline when a text has no line breaks), mean F-measure with precision, recall and bootstrap "
    "95% intervals, on rouge-score's 0-1 scale.",
    "bleu": "sacreBLEU corpus-level bleu on detokenized text (default settings), with its signature and a bootstrap "
    "95% interval from summed sentence statistics, on sacreBLEU's 0-100 scale.",
    "chrf": "sacreBLEU corpus-level chrf on detokenized text (default settings), with its signature and a bootstrap "
    "95% interval from summed sentence statistics, on sacreBLEU's 0-100 scale.",
}

_KWARGS = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, one per prediction (a list of one string per prediction is accepted too).
    resamples: bootstrap resamples for the interval (default 1000).
    confidence: interval coverage (default 0.95).
    seed: bootstrap seed (default 0).
Returns:
    a dict of scores, each with "<name>_ci_low" / "<name>_ci_high", and "signature".
"""


class HarnessMetric(evaluate.Metric):
    metric = ""  # rouge | bleu | chrf, set by each module's subclass

    def _info(self):
        return evaluate.MetricInfo(
            description=DESCRIPTIONS[self.metric],
            citation="",
            inputs_description=_KWARGS,
            features=[
                datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
                datasets.Features(
                    {"predictions": datasets.Value("string"), "references": datasets.Sequence(datasets.Value("string"))}
                ),
            ],
        )

    def _compute(self, predictions, references, resamples=1000, confidence=0.95, seed=0):
        if any(isinstance(r, (list, tuple)) and len(r) != 1 for r in references):
            raise ValueError(f"harness {self.metric} takes exactly one reference per prediction")
        refs = [r[0] if isinstance(r, (list, tuple)) else r for r in references]
        res = getattr(generation, self.metric)(
            list(predictions), refs, resamples=resamples, confidence=confidence, seed=seed
        )
        out = {}
        for name, est in res.estimates.items():
            out[name] = float(est.value)
            out[name + "_ci_low"] = float(est.low)
            out[name + "_ci_high"] = float(est.high)
        out["signature"] = res.signature
        out["n"] = len(refs)
        return out
