"""Sender ownership: may the users logged in on an address send as this envelope sender?

An address is owned by a user when any source says so: the ``[senders]`` map file or
``domains`` (`popbridge.senders.map.SenderRules`, answered at once) or, with
``ldap_attributes``, the user's directory entry (through the directory's cache).

When the directory cannot answer for one of the users (an outage with nothing cached), the map
and ``domains`` still decide: what they give is owned, and an address the map lists for other
users is not. Any other address fails with `SendersUnavailable`, which the policy lookup answers
with its temporary failure: such mail is delayed, never wrongly refused or wrongly relayed.
"""

from collections.abc import Iterable

from twisted.internet.defer import Deferred, gatherResults

from popbridge.directory import IDirectory, UserFacts
from popbridge.senders.map import SenderRules, address_forms


class SendersUnavailable(Exception):
    """Only the directory could say whether the address is owned, and it cannot answer now."""


class SenderOwners:
    """Who owns which sender address. `rules` is replaced on SIGHUP (a new map file)."""

    def __init__(self, rules: SenderRules, directory: IDirectory | None = None) -> None:
        self.rules = rules
        self._directory = directory  # only with [senders] ldap_attributes

    def owned(self, address: str, users: Iterable[str]) -> "bool | Deferred[bool]":
        """Whether one of `users` owns `address` (a `sender_key`): at once when the map and
        `domains` decide, else a Deferred that may fail with SendersUnavailable (see above)."""
        named = sorted({user for user in users if user})
        if self.rules.owned(address, named):
            return True
        if self._directory is None or not named:
            return False
        lookups = [self._directory.facts(user) for user in named]
        answers = (  # one user (the usual case) without the machinery of gathering
            lookups[0].addCallback(lambda facts: [facts]) if len(lookups) == 1 else gatherResults(lookups, consumeErrors=True)
        )
        return answers.addCallback(self._judge, address, named)

    def _judge(self, answers: list[UserFacts], address: str, named: list[str]) -> bool:
        forms = address_forms(address)
        if any(form in facts.addresses for facts in answers for form in forms):
            return True
        if all(facts.answered for facts in answers) or self.rules.lists(address):
            return False
        unanswered = [user for user, facts in zip(named, answers) if not facts.answered]
        raise SendersUnavailable(f"the directory cannot say whether {', '.join(unanswered)} may send as {address}")
