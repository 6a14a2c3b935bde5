"""Call the server serve.sh started through its OpenAI-compatible API, with nothing but the standard library.

    python client.py "Tell me about lighthouses" [--url http://127.0.0.1:8000] [--stream] [--max-tokens 32]

Posts to /v1/chat/completions (or /v1/completions with --raw) and prints the reply; with --stream it reads the
server-sent events as they arrive. LMSTACK_API_KEY, when set, is sent as the bearer token. A prompt the guard blocks
comes back as HTTP 400 with the policy's message; a reply it blocks ends with finish_reason "content_filter".
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


def post(url: str, body: dict, stream: bool = False):
    """POST ``body`` as JSON; the parsed reply, or an iterator over the streamed events' JSON."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get("LMSTACK_API_KEY"):
        headers["Authorization"] = f"Bearer {os.environ['LMSTACK_API_KEY']}"
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        resp = urllib.request.urlopen(req, timeout=120)
    except urllib.error.HTTPError as exc:
        raise SystemExit(f"HTTP {exc.code} from {url}: {exc.read().decode(errors='replace')}") from None
    except urllib.error.URLError as exc:
        raise SystemExit(f"cannot reach {url} ({exc.reason}); is ./serve.sh running?") from None
    if not stream:
        return json.loads(resp.read())
    return (json.loads(line[6:]) for line in (raw.decode().strip() for raw in resp)
            if line.startswith("data: ") and line != "data: [DONE]")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("prompt")
    p.add_argument("--url", default=os.environ.get("URL", "http://127.0.0.1:8000"))
    p.add_argument("--model", default=os.environ.get("MODEL_NAME", "local"))
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--stream", action="store_true", help="print the reply as it is generated")
    p.add_argument("--raw", action="store_true", help="a plain completion of the prompt instead of a chat turn")
    args = p.parse_args()
    body = {"model": args.model, "max_tokens": args.max_tokens, "temperature": args.temperature, "seed": 0,
            "stream": args.stream}
    if args.raw:
        url, body["prompt"] = f"{args.url}/v1/completions", args.prompt
    else:
        url, body["messages"] = f"{args.url}/v1/chat/completions", [{"role": "user", "content": args.prompt}]
    if not args.stream:
        choice = post(url, body)["choices"][0]
        print(choice["text"] if args.raw else choice["message"]["content"])
        print(f"[finish_reason: {choice['finish_reason']}]", file=sys.stderr)
        return
    for event in post(url, body, stream=True):
        for choice in event.get("choices", []):
            sys.stdout.write(choice.get("text") or choice.get("delta", {}).get("content") or "")
            sys.stdout.flush()
            if choice.get("finish_reason"):
                print(f"\n[finish_reason: {choice['finish_reason']}]", file=sys.stderr)


if __name__ == "__main__":
    main()
