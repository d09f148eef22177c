"""popbridge: a POP-before-SMTP bridge for Postfix, Sendmail and Exim."""
