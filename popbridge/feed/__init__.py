"""The Dovecot feed: logins learned from Dovecot's auth-policy HTTP requests, no proxy in the mail path.

The service calls `feed_site` once per ``[[feed]]`` table and listens with the factory it gets.
"""

from popbridge.feed.resource import feed_site

__all__ = ["feed_site"]
