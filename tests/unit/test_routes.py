"""The route allowlist, table-driven: what the example policy allows and refuses."""


import pytest

from spoa_agent.config import load_config
from spoa_agent.install.shipped import EXAMPLE_CONFIG
from spoa_agent.policy import Route, RouteError, RouteTable, normalize_host

EXAMPLE = EXAMPLE_CONFIG


@pytest.fixture(scope="module")
def table() -> RouteTable:
    return RouteTable(load_config(EXAMPLE, env={}).routes)


ALLOWED = [
    ("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/v1/models/llama3.2:1b"),
    ("POST", "/v1/responses"), ("POST", "/v1/messages"), ("GET", "/api/version"),
    ("GET", "/api/tags"), ("POST", "/api/show"), ("POST", "/api/chat"),
    ("POST", "/api/generate"), ("POST", "/api/embed"),
]


@pytest.mark.parametrize(("method", "path"), ALLOWED)
def test_example_policy_allows(table: RouteTable, method: str, path: str) -> None:
    decision = table.decide(method, path)
    assert decision.allowed, decision
    assert decision.rule


DENIED = [
    ("POST", "/api/pull", "route_not_allowed"),
    ("DELETE", "/api/delete", "route_not_allowed"),
    ("POST", "/api/create", "route_not_allowed"),
    ("POST", "/api/push", "route_not_allowed"),
    ("POST", "/api/copy", "route_not_allowed"),
    ("GET", "/api/chat", "method_not_allowed"),
    ("DELETE", "/v1/models/llama3", "method_not_allowed"),
    ("POST", "//api/pull", "route_not_allowed"),
    ("POST", "/api/pull/", "route_not_allowed"),
    ("POST", "/API/PULL", "route_not_allowed"),
    ("POST", "/api/%70ull", "route_not_allowed"),
    ("POST", "/api/pull?x=1", "route_not_allowed"),
    ("POST", "/api/pull#x", "route_not_allowed"),
    ("POST", "/v1/../api/pull", "route_not_allowed"),
    ("GET", "/v1/models/..", "route_not_allowed"),
    ("GET", "/v1/models/a/b", "route_not_allowed"),
    ("GET", "/v1/models/%2e%2e", "route_not_allowed"),
    ("GET", "/v1/models/", "route_not_allowed"),
    ("GET", "/", "route_not_allowed"),
    ("GET", "", "route_not_allowed"),
    ("POST", "/api/chat" + "/x" * 5000, "route_not_allowed"),
]


@pytest.mark.parametrize(("method", "path", "reason"), DENIED)
def test_example_policy_refuses(table: RouteTable, method: str, path: str, reason: str) -> None:
    decision = table.decide(method, path)
    assert not decision.allowed
    assert (decision.status, decision.reason) == (403, reason)


def test_no_routes_denies_everything() -> None:
    assert not RouteTable(()).decide("GET", "/api/tags").allowed


def test_same_template_in_two_rules_merges_methods() -> None:
    table = RouteTable((Route("/m/{id}", frozenset({"GET"})), Route("/m/{id}", frozenset({"PUT"}))))
    assert table.decide("GET", "/m/1").allowed
    assert table.decide("PUT", "/m/1").allowed
    assert not table.decide("POST", "/m/1").allowed


def test_many_templates_each_match_their_own() -> None:
    routes = tuple(Route(f"/t{i}/{{x}}", frozenset({"GET"}), f"r{i}") for i in range(200))
    table = RouteTable(routes)
    assert table.decide("GET", "/t137/abc").rule == "r137"
    assert not table.decide("GET", "/t200/abc").allowed


@pytest.mark.parametrize(
    ("path", "methods"),
    [("api/tags", {"GET"}), ("/a/{", {"GET"}), ("/a/{x", {"GET"}), ("/a", set()),
     ("/a", {"FETCH"})],
)
def test_bad_routes_are_refused(path: str, methods: set[str]) -> None:
    with pytest.raises(RouteError):
        Route(path, frozenset(methods))


def test_hosts_exact_wildcard_and_any() -> None:
    table = RouteTable((
        Route("/api/chat", frozenset({"POST"}), "hal", host="hal9000-api.example.com"),
        Route("/api/chat", frozenset({"POST"}), "nodes", host="*.nodes.example.com"),
        Route("/api/tags", frozenset({"GET"}), "anywhere"),
    ))
    assert table.decide("POST", "/api/chat", "HAL9000-api.example.com:443").rule == "hal"
    assert table.decide("POST", "/api/chat", "brainiac.nodes.example.com").rule == "nodes"
    assert not table.decide("POST", "/api/chat", "other.example.com").allowed
    assert not table.decide("POST", "/api/chat", "").allowed
    # Rules without a host apply on every host.
    assert table.decide("GET", "/api/tags", "hal9000-api.example.com").rule == "anywhere"
    assert table.decide("GET", "/api/tags", "x").rule == "anywhere"


@pytest.mark.parametrize("host", [
    "chat.example.com.", "chat.example.com..", "CHAT.EXAMPLE.COM.", "chat.example.com.:8080",
    "chat..example.com", ".chat.example.com", "chat.example.com:80.", "chat_example.com",
    "chat.example.com ", "chat.example.com:", "chat.example.com:123456", "[::1",
])
def test_a_host_in_no_canonical_spelling_is_refused_as_ambiguous(host: str) -> None:
    # haproxy.cfg refuses the same spellings before the agent sees them, and
    # picks the backend by the same reading of the rest (txn.host).
    own = Route("/", frozenset({"POST"}), "openwebui", host="chat.example.com", prefix=True,
                public=True)
    decision = RouteTable((own,)).decide("POST", "/api/pull", host)
    assert (decision.status, decision.reason) == (400, "ambiguous_host")


@pytest.mark.parametrize("host", ["chat.example.com", "Chat.Example.COM:8080"])
def test_a_canonical_host_is_read_without_port_and_case(host: str) -> None:
    own = Route("/", frozenset({"POST"}), "openwebui", host=normalize_host(host), prefix=True)
    assert RouteTable((own,)).decide("POST", "/api/pull", host).rule == "openwebui"


@pytest.mark.parametrize(("path", "allowed"), [
    ("/ui/", True), ("/ui/index.html", True), ("/ui/a/b", True),
    ("/ui/../api/pull", False), ("/ui/./x", False), ("/ui//x", False), ("/ui/..", False),
    ("/ui/%2e%2e/api/pull", False), ("/ui/a%2Fb", False), ("/ui\\\\x", False),
    ("/uix", False), ("/api/pull", False),
])
def test_prefix_never_admits_dot_segments_or_encoded_separators(path: str,
                                                                allowed: bool) -> None:
    table = RouteTable((Route("/ui/", frozenset({"GET"}), "ui", prefix=True),))
    assert table.decide("GET", path).allowed is allowed


def test_longest_prefix_wins() -> None:
    table = RouteTable((Route("/", frozenset({"GET"}), "root", prefix=True),
                        Route("/static/", frozenset({"GET"}), "static", prefix=True)))
    assert table.decide("GET", "/static/a.css").rule == "static"
    assert table.decide("GET", "/x").rule == "root"


def test_shadowed_rules_are_found() -> None:
    first = Route("/api/chat", frozenset({"POST"}), "mine")
    second = Route("/api/chat", frozenset({"POST", "GET"}), "theirs")
    other_host = Route("/api/chat", frozenset({"POST"}), "hal", host="hal.example.com")
    assert RouteTable((first, second, other_host)).shadowed() == [(first, second)]


def test_a_hosts_own_prefix_wins_over_a_generic_exact_path() -> None:
    table = RouteTable((
        Route("/api/tags", frozenset({"GET"}), "generic-tags"),
        Route("/", frozenset({"GET"}), "openwebui", host="chat.example.com", prefix=True,
              public=True),
    ))
    assert table.decide("GET", "/api/tags", "chat.example.com").rule == "openwebui"
    assert table.decide("GET", "/api/tags", "gw.example.com").rule == "generic-tags"


def test_cached_decisions_are_the_decisions(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each (method, path, host) is decided once, then answered from the cache,
    # which never grows past its bound nor keeps a long path.
    from spoa_agent.policy import routes

    monkeypatch.setattr(routes, "DECISION_CACHE_SIZE", 8)
    table = RouteTable(load_config(EXAMPLE, env={}).routes)
    requests = [(method, path, host) for method, path in ALLOWED + [(m, p) for m, p, _ in DENIED]
                for host in ("", "api.example.com", "Bad_Host")]
    for _ in range(2):
        for method, path, host in requests:
            assert table.decide(method, path, host) == table._decide(method, path, host)
            assert len(table._decided) <= 8
    long_path = "/api/" + "a" * routes.CACHED_REQUEST_SIZE
    assert not table.decide("GET", long_path).allowed
    assert ("GET", long_path, "") not in table._decided
