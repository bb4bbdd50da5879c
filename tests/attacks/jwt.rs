//! JWT attacks (RFC 8725) and identity borrowing across issuers.
