//! Name patterns for tables and columns: `public.users`, `public.*`, `*.audit_*`, `*` (a `*`
//! matches any run of characters, dots included).

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<String>);

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob(pattern.split('*').map(str::to_owned).collect())
    }

    pub fn matches(&self, text: &str) -> bool {
        let parts = &self.0;
        if parts.len() == 1 {
            return parts[0] == text;
        }
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        if !text.starts_with(first.as_str()) || text.len() < first.len() + last.len() || !text.ends_with(last.as_str())
        {
            return false;
        }
        let mut rest = &text[first.len()..text.len() - last.len()];
        for middle in &parts[1..parts.len() - 1] {
            match rest.find(middle.as_str()) {
                Some(i) => rest = &rest[i + middle.len()..],
                None => return false,
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_a_shell() {
        let cases = [
            ("public.users", "public.users", true),
            ("public.users", "public.user", false),
            ("public.*", "public.users", true),
            ("public.*", "audit.users", false),
            ("*", "anything.at_all", true),
            ("*.audit_*", "x.audit_log", true),
            ("*.audit_*", "x.audi", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(Glob::new(pattern).matches(text), expected, "{pattern} vs {text}");
        }
    }
}
