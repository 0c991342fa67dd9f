"""Remote model updates from a signed registry (The Update Framework).

* :mod:`edged.update.registry` – the publisher side: a TUF repository of static
  files (``edged registry init|publish|rollout|withdraw|refresh|rotate|status``),
  built with ``tuf.api.metadata`` and securesystemslib signers.
* :mod:`edged.update.rollout` – the rollout bucket (device, model, version) → 0..99.
* :mod:`edged.update.decide` – what a device should do with a model, given the
  signed per-model index and what it serves (pure logic).
* :mod:`edged.update.fetch` – a TUF fetcher with HTTP Range resume, bounded
  retries with backoff and a rate limit.
* :mod:`edged.update.client` – one check: TUF refresh (ngclient), decisions,
  verified downloads into the staging area, atomic rename into the repository.
* :mod:`edged.update.strategy` – when to check and whether to download now.
* :mod:`edged.update.service` – the background thread that runs checks.

The registry layout and the device's behaviour are documented in docs/updates.md.
"""
