"""A private OpenLDAP (slapd) with its own cn=config, the people and groups the tests ask about."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .processes import ForegroundServer, LogFile, ServerError, binary, free_port, log_tail, run_checked, short_directory, tcp_listening, wait_until


LDAP_BASE = "dc=example,dc=org"


LDAP_EXEMPT_GROUP = f"cn=exempt,ou=groups,{LDAP_BASE}"


LDAP_BIND_DN = f"cn=popbridge,ou=services,{LDAP_BASE}"


LDAP_BIND_PASSWORD = "popbridge-bind-pw"


_LDAP_ADMIN_DN, _LDAP_ADMIN_PASSWORD = f"cn=admin,{LDAP_BASE}", "admin-pw"


@dataclass
class Slapd(ForegroundServer):
    """A private OpenLDAP 2.5 slapd on 127.0.0.1: cn=config built with ``slapadd -n0``, an mdb
    database in its own directory, and the memberof overlay, so members of the groupOfNames
    `LDAP_EXEMPT_GROUP` carry ``memberOf``. `people` maps uid -> extra attributes (``mailHost``);
    `exempt` lists the uids in the group. Only `LDAP_BIND_DN` (a simple bind) may read entries.

    slapd runs in the foreground (``-d``), so `pause`/`resume` (SIGSTOP/SIGCONT) and `stop` act
    on the process itself; `start` again reuses the database on the same port.
    """

    people: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    exempt: Iterable[str] = ()
    host: str = "127.0.0.1"
    name = "slapd"

    def __post_init__(self) -> None:
        self.directory = short_directory("pb-slapd-")
        self.port = free_port(self.host)
        self.log = LogFile(self.directory / "slapd.log")
        self.process: subprocess.Popen[bytes] | None = None
        self._loaded = False

    @property
    def url(self) -> str:
        return f"ldap://{self.host}:{self.port}"

    def config_ldif(self) -> str:
        d = self.directory
        schemas = "".join(f"include: file:///etc/ldap/schema/{name}.ldif\n\n" for name in ("core", "cosine", "inetorgperson", "misc"))
        return f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {d}/slapd.pid

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb
olcModuleLoad: memberof

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

{schemas}dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {LDAP_BASE}
olcRootDN: {_LDAP_ADMIN_DN}
olcRootPW: {_LDAP_ADMIN_PASSWORD}
olcDbDirectory: {d}/db
olcDbMaxSize: 16777216
olcAccess: {{0}}to attrs=userPassword by anonymous auth by * none
olcAccess: {{1}}to * by dn.exact="{LDAP_BIND_DN}" read by * none

dn: olcOverlay={{0}}memberof,olcDatabase={{1}}mdb,cn=config
objectClass: olcOverlayConfig
objectClass: olcMemberOf
olcOverlay: {{0}}memberof
olcMemberOfGroupOC: groupOfNames
olcMemberOfMemberAD: member
olcMemberOfMemberOfAD: memberOf
"""

    def data_ldif(self) -> str:
        entries = [
            f"dn: {LDAP_BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: example\n",
            *(f"dn: ou={ou},{LDAP_BASE}\nobjectClass: organizationalUnit\nou: {ou}\n" for ou in ("people", "groups", "services")),
            f"dn: {LDAP_BIND_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
            f"cn: popbridge\nuserPassword: {LDAP_BIND_PASSWORD}\n",
        ]
        for uid, extra in self.people.items():
            lines = [f"dn: uid={uid},ou=people,{LDAP_BASE}", "objectClass: inetOrgPerson",
                     "objectClass: inetLocalMailRecipient", f"uid: {uid}", f"cn: {uid}", f"sn: {uid}"]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            entries.append("\n".join(lines) + "\n")
        return "\n".join(entries)

    def start(self) -> "Slapd":
        if not self._loaded:
            config, db = self.directory / "slapd.d", self.directory / "db"
            config.mkdir()
            db.mkdir()
            (self.directory / "config.ldif").write_text(self.config_ldif())
            (self.directory / "data.ldif").write_text(self.data_ldif())
            run_checked([binary("slapadd"), "-n0", "-F", str(config), "-l", str(self.directory / "config.ldif")], "slapadd -n0")
            run_checked([binary("slapadd"), "-n1", "-F", str(config), "-l", str(self.directory / "data.ldif")], "slapadd -n1")
        with open(self.log.path, "ab") as output:
            self.process = subprocess.Popen(
                [binary("slapd"), "-h", f"{self.url}/", "-F", str(self.directory / "slapd.d"), "-d", "256"],
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            )
        try:
            wait_until(lambda: tcp_listening(self.host, self.port), f"slapd on {self.url}", alive=self._why_dead)
            if not self._loaded:
                self._add_exempt_group()  # through slapd, so that the memberof overlay sees it
        except ServerError as e:
            self.stop()
            raise ServerError(f"{e}\n{log_tail(self.log.path)}") from None
        self._loaded = True
        return self

    def _add_exempt_group(self) -> None:
        from ldap3 import Connection, Server

        members = [f"uid={uid},ou=people,{LDAP_BASE}" for uid in self.exempt] or [_LDAP_ADMIN_DN]
        with Connection(Server(self.url), _LDAP_ADMIN_DN, _LDAP_ADMIN_PASSWORD, auto_bind=True) as admin:
            if not admin.add(LDAP_EXEMPT_GROUP, ["groupOfNames"], {"cn": "exempt", "member": members}):
                raise ServerError(f"adding {LDAP_EXEMPT_GROUP}: {admin.result}")

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, but nothing is answered."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        # the stop reaches slapd's threads one by one; until all are stopped it may still answer
        wait_until(lambda: self._all_threads_in_state("T"), "slapd stopped by SIGSTOP", timeout=10)

    def _all_threads_in_state(self, state: str) -> bool:
        assert self.process is not None
        tasks = Path(f"/proc/{self.process.pid}/task")
        try:
            # /proc/PID/task/TID/stat: "TID (comm) STATE ...": comm may hold spaces, so split after ")"
            return all(
                (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == state for task in tasks.iterdir()
            )
        except (OSError, IndexError):
            return False

    def __enter__(self) -> "Slapd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
