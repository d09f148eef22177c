"""The twistd plugin's options and service maker: ``twistd -n popbridge --config FILE``."""

from twisted.application.service import IService
from twisted.python import usage

from popbridge.config import ConfigError, load_config


class Options(usage.Options):
    optParameters = [["config", "c", None, "the popbridge configuration file (TOML)"]]

    def postOptions(self) -> None:
        if not self["config"]:
            raise usage.UsageError("--config FILE is required")
        try:
            self["loaded"] = load_config(self["config"])
        except ConfigError as e:
            raise usage.UsageError(str(e)) from None


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    from popbridge.daemon.service import build_service

    return build_service(options["loaded"], reactor)
