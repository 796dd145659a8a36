"""`routingd explain ROUTE [--config PATH] [--message FILE.json] [--json]`: a route's failover
plan with every effective timeout and where it came from (rendered by explain.py)."""

from __future__ import annotations

import argparse
import json
import sys

from .cli_input import EXIT_INVALID, EXIT_OK, InputError, _err, default_config, load, load_request


def cmd_explain(args: argparse.Namespace) -> int:
    from .core.plan import PlanError, resolve_plan
    from .explain import render_tree

    config = args.config or default_config()
    try:
        policy = load(config)
        request = load_request(args.message) if args.message else None
    except InputError as e:
        for line in e.lines():
            _err(line)
        return EXIT_INVALID
    route = args.route
    if route is None:
        route = request.route if request is not None and request.route else "default"
    elif request is not None and request.route and request.route != route:
        _err(f"{args.message}: warning: message.route {request.route!r} is ignored; "
             f"explaining route {route!r}")
    try:
        plan = resolve_plan(policy, route, request)
    except PlanError as e:
        for p in e.problems:
            if p.loc == ("message", "route") and args.route is not None:
                _err(f"routingd explain: {p.msg}")
            else:
                where = args.message if p.loc[:1] == ("message",) and args.message else policy.path
                _err(f"{where}: {p.key_path}: {p.msg}")
        return EXIT_INVALID
    content = None
    if request is not None:
        from .explain import channel_contents
        try:
            content = channel_contents(policy, plan, request)
        except PlanError as e:
            for p in e.problems:
                _err(f"{args.message}: {p.key_path}: {p.msg}")
            return EXIT_INVALID
    from .explain import add_limits, outbound_limits
    limits = outbound_limits(policy)
    if args.json:
        doc = plan.to_json()
        add_limits(doc, limits)
        if request is not None:     # what the text marks SKIPPED
            from .explain import skipped_channels
            doc["skipped"] = skipped_channels(plan.items, dict(request.to))
        if content is not None:
            doc["content"] = {ch: {"title": c.title, "text": c.text, "html": c.html, "source": source}
                              for ch, (c, source) in content.items()}
        print(json.dumps(doc, indent=2))
    else:
        recipient = dict(request.to) if request is not None else None
        sys.stdout.write(render_tree(plan, recipient, list(policy.model.failover.on), limits))
        if content is not None:
            from .explain import render_contents
            sys.stdout.write(render_contents(content))
    return EXIT_OK
