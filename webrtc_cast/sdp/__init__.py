"""Pure SDP: parsing and answer writing (description), offer/answer planning (negotiation), simulcast (RFC 8853)."""
