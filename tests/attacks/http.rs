//! HTTP framing and header attacks: smuggling, upgrades, spoofed forwarding and identity headers, size limits; over HTTP/1.1 and HTTP/2.
