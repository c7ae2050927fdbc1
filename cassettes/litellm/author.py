"""Write the LiteLLM cassettes (cassettes/litellm/*.yaml) from the scenario table below.

Same rules as cassettes/langchain/author.py (whose writer this reuses):
responses and ``usage`` chosen by hand in api.openai.com's wire format,
request bodies as litellm 1.110 (and, for one_ledger, CrewAI 1.15 and
langchain-openai 1.7) send them. ``proxy_upstream.yaml`` is what the
loopback upstream behind the LiteLLM proxy answers in the end-to-end test.

    python cassettes/litellm/author.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "_lc_author", Path(__file__).resolve().parents[1] / "langchain" / "author.py")
assert _spec is not None and _spec.loader is not None
_author = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_author)
chat_json, interaction, sse, usage = _author.chat_json, _author.interaction, _author.sse, _author.usage
OUT = Path(__file__).resolve().parent


def write(name, interactions, header):
    _author.write(name, interactions, header, out=OUT)


HDR = """# Hand-written OpenAI Chat Completions traffic for the LiteLLM tests (tests/litellm).
# Responses (content, usage) are written by hand in the exact wire format of api.openai.com
# (JSON, and SSE streams whose last chunk carries usage); the usage numbers are plausible
# counts chosen by hand, never computed by crew-budget. Request bodies are what litellm 1.110
# sends for the scenario (crew-budget adds max_tokens when the call has no cap, and
# stream_options.include_usage to streams); replay matches on method + URL, in order.
# See cassettes/README.md.
"""


CROWD = [  # city, answer, prompt tokens, completion tokens (all chosen by hand)
    ("Aveiro", "The Moliceiro canals and the Costa Nova striped houses.", 29, 13),
    ("Viseu", "Viseu Cathedral and the Grao Vasco Museum.", 29, 11),
    ("Leiria", "Leiria Castle and the Lis river walk.", 29, 10),
    ("Setubal", "The Arrabida hills and the Jesus Monastery.", 30, 11),
    ("Guimaraes", "Guimaraes Castle and the Palace of the Dukes of Braganza.", 30, 14),
    ("Obidos", "The town walls and the Santa Maria church.", 30, 10),
    ("Nazare", "The Sitio lookout and the Fort of Sao Miguel Arcanjo.", 29, 14),
    ("Lamego", "The Remedios sanctuary stairway and Lamego Cathedral.", 29, 12),
    ("Chaves", "The Roman bridge of Trajan and the Keep of Chaves.", 29, 13),
    ("Elvas", "The Amoreira Aqueduct and the Fort of Graca.", 30, 12),
    ("Beja", "Beja Castle keep and the Queen Leonor Museum.", 29, 11),
    ("Silves", "Silves Castle and the Gothic cathedral.", 29, 9),
    ("Viana do Castelo", "The Santa Luzia sanctuary and the Gil Eannes ship.", 31, 13),
    ("Braganca", "The medieval citadel and the Domus Municipalis.", 30, 11),
    ("Cascais", "The Boca do Inferno cliffs and the Citadel of Cascais.", 30, 13),
    ("Peniche", "Peniche Fortress and the Berlengas islands boat trip.", 30, 12),
    ("Amarante", "The Sao Goncalo bridge and the Sao Goncalo church.", 30, 13),
    ("Monsaraz", "The hilltop castle and the Alqueva lake view.", 30, 11),
    ("Marvao", "Marvao Castle and its granite town walls.", 30, 10),
    ("Batalha", "The Batalha Monastery and its Unfinished Chapels.", 30, 11),
]
LISBON = ["Belem Tower.", "Jeronimos Monastery.", "Sao Jorge Castle.", "The Alfama district.",
          "Praca do Comercio.", "The Santa Justa Lift.", "The Oceanarium.", "LX Factory.",
          "The Gulbenkian Museum.", "Belem Tower.", "Tram 28.", "The Carmo Convent.",
          "Sao Jorge Castle.", "The Tile Museum.", "Rossio Square.", "The Ajuda Palace.",
          "Jeronimos Monastery.", "The Pink Street.", "Belem Tower.", "The Bairro Alto."]
MADEIRA = ["Cabo Girao skywalk.", "The Funchal cable car.", "Pico do Arieiro.",
           "The Monte Palace gardens.", "Porto Moniz pools.", "The levada walks.",
           "Cabo Girao skywalk.", "Ponta de Sao Lourenco.", "The Mercado dos Lavradores.",
           "Santana's houses.", "Pico do Arieiro.", "The Monte toboggans.", "Funchal Cathedral.",
           "The Botanical Garden.", "Porto Moniz pools.", "The Caldeirao Verde levada.",
           "Seixal beach.", "Cabo Girao skywalk.", "Fanal forest.", "The Monte Palace gardens."]


def main() -> None:
    Q_FR = "Name the capital of France in one word."
    Q_PT = "Name the capital of Portugal in one word."
    def req(q, cap=256, **extra):
        b = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": q}], "max_tokens": cap}
        b.update(extra); return b

    write("completion", [
        interaction(req(Q_FR), 200, chat_json("chatcmpl-ll-chat-1", 1764073000, "Paris.", usage(16, 2)), "application/json", 204),
        interaction(req(Q_PT), 200, chat_json("chatcmpl-ll-chat-2", 1764073004, "Lisbon.", usage(16, 3)), "application/json", 189),
    ], HDR + "# completion: two plain calls (France, Portugal), non-streaming.\n")

    write("completion_stream", [
        interaction(req(Q_FR, stream=True, stream_options={"include_usage": True}), 200,
                    sse("chatcmpl-ll-stream-1", 1764073100, ["Paris", "."], usage(16, 2), True), "text/event-stream; charset=utf-8", 138),
    ], HDR + "# completion_stream: one SSE stream whose final chunk carries usage.\n")

    write("server_error", [
        interaction(req(Q_FR), 500, {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                                                "type": "server_error", "param": None, "code": None}}, "application/json", 49),
    ], HDR + "# server_error: HTTP 500 (providers do not bill failed requests).\n")

    SYS = "You are the research agent of a travel crew."
    def preq(q, stream=False):
        b = {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": SYS}, {"role": "user", "content": q}], "max_tokens": 256}
        if stream: b.update(stream=True, stream_options={"include_usage": True})
        return b
    def fan_req(place):
        return {"model": "gpt-4o-mini", "messages": [{"role": "system", "content": SYS},
                {"role": "user", "content": f"List one sight in {place}."}], "max_tokens": 16, "n": 20}
    def fan_json(cid, created, answers, u):
        body = chat_json(cid, created, answers[0], u)
        body["choices"] = [{**body["choices"][0], "index": i,
                            "message": {**body["choices"][0]["message"], "content": a}}
                           for i, a in enumerate(answers)]
        return body
    write("proxy_upstream", [
        interaction(preq("List two sights in Porto."), 200,
                    chat_json("chatcmpl-ll-proxy-1", 1764073200, "The Ribeira district and the Livraria Lello.", usage(29, 11)), "application/json", 311),
        interaction(preq("List two sights in Braga."), 200,
                    chat_json("chatcmpl-ll-proxy-2", 1764073205, "Bom Jesus do Monte and Braga Cathedral.", usage(29, 10)), "application/json", 298),
        interaction(preq("List two sights in Faro.", stream=True), 200,
                    sse("chatcmpl-ll-proxy-3", 1764073210, ["The", " Old", " Town", " and", " the", " Ria", " Formosa", "."], usage(29, 9), True),
                    "text/event-stream; charset=utf-8", 174),
        interaction(preq("List two sights in Evora."), 200,
                    chat_json("chatcmpl-ll-proxy-4", 1764073215, "The Roman Temple and the Chapel of Bones.", usage(30, 10)), "application/json", 305),
        interaction(preq("List two sights in Tomar."), 500,
                    {"error": {"message": "The server had an error while processing your request. Sorry about that!",
                               "type": "server_error", "param": None, "code": None}}, "application/json", 61),
        interaction(preq("List two sights in Coimbra."), 200,
                    chat_json("chatcmpl-ll-proxy-5", 1764073220, "The old University and the Joanina Library.", usage(30, 11)), "application/json", 296),
        # Ten pairs of concurrent requests sharing one x-litellm-call-id per pair: twenty
        # distinct answers, each with its own hand-picked usage (prompt 29-31 tokens for
        # the system line + one city name; completion = the answer's length in tokens).
        *[interaction(preq(f"List two sights in {city}."), 200,
                      chat_json(f"chatcmpl-ll-crowd-{i + 1}", 1764073400 + i, answer, usage(p, c)),
                      "application/json", 250 + 7 * i)
          for i, (city, answer, p, c) in enumerate(CROWD)],
        # n=20, max_tokens=16: twenty choices in one response; usage counts the prompt once
        # and the tokens of all twenty choices (OpenAI bills every choice).
        interaction(fan_req("Lisbon"), 200, fan_json("chatcmpl-ll-fan-1", 1764073500, LISBON, usage(28, 97)),
                    "application/json", 640),
        interaction(fan_req("Madeira"), 200, fan_json("chatcmpl-ll-fan-2", 1764073510, MADEIRA, usage(29, 104)),
                    "application/json", 655),
    ], HDR + "# proxy_upstream: what the loopback upstream behind the LiteLLM proxy answers (the test's\n"
             "# ReplayUpstream answers a request with the interaction recorded for its messages).\n")

    crew_req = {"messages": [{"role": "system", "content": "You are analyst. You answer in one sentence.\nYour personal goal is: Give one fact"},
                             {"role": "user", "content": "\nCurrent Task: State one fact about Lisbon trams.\n\nThis is the expected criteria for your final answer: One sentence\nyou MUST return the actual complete content as the final answer, not a summary.\n\nProvide your complete response:"}],
                "model": "gpt-4o-mini", "max_completion_tokens": 256}
    lc_req = {"messages": [{"content": "You plan one-day trips.", "role": "system"}, {"content": "Plan a morning in Sintra.", "role": "user"}],
              "model": "gpt-4o-mini", "max_completion_tokens": 256, "stream": False}
    ll_req = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Shorten: Start at Pena Palace at opening time, then walk to the Moorish Castle."}], "max_tokens": 256}
    write("one_ledger", [
        interaction(crew_req, 200, chat_json("chatcmpl-ll-one-1", 1764073300,
            "Lisbon's tram 28 climbs through the Alfama district on a route first opened in 1914.", usage(80, 21)), "application/json", 388),
        interaction(lc_req, 200, chat_json("chatcmpl-ll-one-2", 1764073305,
            "Start at Pena Palace at opening time, then walk to the Moorish Castle.", usage(25, 17)), "application/json", 342),
        interaction(ll_req, 200, chat_json("chatcmpl-ll-one-3", 1764073309,
            "Pena Palace, then the Moorish Castle.", usage(34, 9)), "application/json", 201),
    ], HDR + "# one_ledger: a CrewAI crew, a LangChain agent and a litellm call, in that order, all\n"
             "# charged to one ledger that a LiteLLM proxy shares (tests/litellm/test_proxy.py).\n")


if __name__ == "__main__":
    main()
