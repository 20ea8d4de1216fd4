"""Every URL under a prefix, built from the URL resolver so that a new admin or staff page is covered."""

from django.urls import URLPattern, URLResolver, get_resolver, reverse

SAMPLE_KWARGS = {"app_label": "jobs", "content_type_id": "1"}


def _walk(patterns, prefix: str, namespace: str):
    for p in patterns:
        if isinstance(p, URLResolver):
            ns = f"{namespace}:{p.namespace}" if namespace and p.namespace else (p.namespace or namespace)
            yield from _walk(p.url_patterns, prefix + str(p.pattern), ns)
        elif isinstance(p, URLPattern):
            name = p.name and (f"{namespace}:{p.name}" if namespace else p.name)
            yield prefix + str(p.pattern), name, p


def urls_under(route_prefix: str) -> dict[str, str]:
    """{url name: a concrete URL} for every named route whose pattern starts with ``route_prefix``."""
    found = {}
    for route, name, pattern in _walk(get_resolver().url_patterns, "", ""):
        if not route.lstrip("^").startswith(route_prefix) or not name:
            continue
        kwargs = {k: SAMPLE_KWARGS.get(k, "1") for k in pattern.pattern.regex.groupindex}
        found[name] = reverse(name, kwargs=kwargs)
    return found
