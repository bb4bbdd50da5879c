//! Path confusion: dot-segments raw and encoded, `//`, encoded slash, backslash, absolute-form, segment boundaries.
