from twisted.application.service import ServiceMaker

popbridge = ServiceMaker(
    "popbridge",
    "popbridge.tap",
    "POP-before-SMTP bridge: proxies POP3 and IMAP4, remembers logins, answers relay lookups",
    "popbridge",
)
