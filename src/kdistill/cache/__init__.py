"""The teacher cache: every kind of teacher output, sharded, memory-mapped, keyed, verified, resumable.

    keys.py       key fields and the key (sha256 of their canonical JSON)
    shard.py      one shard's byte layout: bit-packed ids, fp16 log-probs, per-example CRC-32
    entry.py      TeacherCache / CacheEntry: write shards, finalize (manifest last), read by id
    verify.py     full verification of an entry
    resumable.py  elicit_resumable: compute only missing shards; safe to kill and re-run
    tools.py      cache_info / cache_verify / cache_repair / cache_export (the `kdistill cache` commands)
    openai.py     import the vLLM / OpenAI `logprobs` JSON as token rows

The format is documented in docs/cache-format.md so that other tools can write and read it.
"""

from kdistill.cache.entry import CacheEntry, TeacherCache, open_entry
from kdistill.cache.keys import fingerprint, ids_fingerprint, key_fields, key_of
from kdistill.cache.openai import import_openai_top_logprobs
from kdistill.cache.resumable import elicit_resumable
from kdistill.cache.shard import CacheCorruptError, TokenRow
from kdistill.cache.tools import cache_export, cache_info, cache_repair, cache_verify
from kdistill.cache.verify import VerifyReport, verify_entry

__all__ = ["CacheCorruptError", "CacheEntry", "TeacherCache", "TokenRow", "VerifyReport", "verify_entry", "cache_export",
           "cache_info", "cache_repair", "cache_verify", "elicit_resumable", "fingerprint", "ids_fingerprint",
           "import_openai_top_logprobs", "key_fields", "key_of", "open_entry"]
