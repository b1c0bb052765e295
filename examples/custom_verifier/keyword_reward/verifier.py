"""A custom verifier in about twenty lines: the fraction of required keywords used."""

from referee import InvalidInput, Result, Sample, verifier


@verifier(name="keywords", version="1", param_docs={"case_sensitive": "match case exactly"})
def keyword_coverage(sample: Sample, *, case_sensitive: bool = False) -> Result:
    """Fraction of `metadata.keywords` that appear in the completion."""
    keywords = sample.metadata.get("keywords")
    if not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) for k in keywords):
        raise InvalidInput("metadata.keywords must be a non-empty list of strings")
    text = sample.completion or ""
    if not case_sensitive:
        text, keywords = text.lower(), [k.lower() for k in keywords]
    found = {k: float(k in text) for k in keywords}
    missing = [k for k, hit in found.items() if not hit]
    return Result.ok(sum(found.values()) / len(found), reason=f"missing: {missing}", components=found)
