use super::super::tests::error;

const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";

#[test]
fn the_token_endpoint_limit_is_on_by_default_and_checked_with_its_path() {
    let config = super::super::Config::parse("[[listeners]]\naddress = \"127.0.0.1:1\"\n");
    let quota = config.unwrap().tokens.limit_quota().unwrap();
    assert_eq!((quota.requests, quota.window.as_secs()), (20, 60));
    let base = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[tokens]\n";
    for (body, path) in [
        ("limit_by = []", "tokens.limit_by"),
        ("limit_requests = 0", "tokens.limit_requests"),
        ("limit_window = \"0s\"", "tokens.limit_window"),
        ("limit_by = [\"everyone\"]", "tokens.limit_by"),
    ] {
        let message = error(&format!("{base}{body}\n"));
        assert!(message.starts_with(path), "{body}: {message}");
    }
    let off = format!("{base}rate_limit = false\nlimit_by = []\n");
    let config = super::super::Config::parse(&off).unwrap();
    assert!(config.tokens.limit_quota().is_none());
}

#[test]
fn hmac_algorithms_are_refused_with_their_path() {
    let message = error(&format!(
        "{LISTENER}[[issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\njwks_url = \"https://x\"\nalgorithms = [\"RS256\", \"HS256\"]\n",
    ));
    assert!(message.starts_with("issuers[0].algorithms[1]"), "{message}");
}

fn issuer(body: &str) -> String {
    format!("{LISTENER}[[issuers]]\nissuer = \"https://idp\"\n{body}\n")
}

#[test]
fn audiences_are_required_and_star_stands_alone() {
    let message = error(&issuer("jwks_url = \"https://idp/jwks\""));
    assert!(
        message.starts_with("issuers[0].audiences: required"),
        "{message}"
    );
    let message = error(&issuer("jwks_url = \"https://idp/jwks\"\naudiences = []"));
    assert!(message.starts_with("issuers[0].audiences"), "{message}");
    let message = error(&issuer(
        "jwks_url = \"https://idp/jwks\"\naudiences = [\"*\", \"api\"]",
    ));
    assert!(message.starts_with("issuers[0].audiences"), "{message}");
    let any = issuer("jwks_url = \"https://idp/jwks\"\naudiences = [\"*\"]");
    assert!(super::super::Config::parse(&any).is_ok());
}

#[test]
fn key_urls_are_https_unless_insecure_http_is_allowed() {
    for key in ["jwks_url", "discovery_url"] {
        let message = error(&issuer(&format!(
            "audiences = [\"api\"]\n{key} = \"http://idp/x\""
        )));
        assert!(
            message.starts_with(&format!("issuers[0].{key}: must be https://")),
            "{message}"
        );
        let message = error(&issuer(&format!(
            "audiences = [\"api\"]\n{key} = \"file:///etc/x\""
        )));
        assert!(
            message.starts_with(&format!("issuers[0].{key}")),
            "{message}"
        );
        let allowed = issuer(&format!(
            "audiences = [\"api\"]\n{key} = \"http://idp/x\"\nallow_insecure_http = true"
        ));
        assert!(super::super::Config::parse(&allowed).is_ok());
    }
}

#[test]
fn issuer_names_are_unique_and_have_no_fragment() {
    let one = "[[issuers]]\nissuer = \"https://idp\"\naudiences = [\"a\"]\njwks_url = \"https://idp/j\"\n";
    let message = error(&format!("{LISTENER}{one}{one}"));
    assert!(message.starts_with("issuers[1].issuer"), "{message}");
    let message = error(&format!(
        "{LISTENER}{}",
        one.replace("https://idp\"", "https://idp#x\"")
    ));
    assert!(message.starts_with("issuers[0].issuer"), "{message}");
    let message = error(&issuer(
        "audiences = [\"a\"]\njwks_url = \"https://idp/j\"\ntyp = [\"\"]",
    ));
    assert!(message.starts_with("issuers[0].typ[0]"), "{message}");
}

#[test]
fn a_required_scope_naming_a_tier_is_refused_in_any_letter_case() {
    let route = format!(
        "{LISTENER}[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:2\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n"
    );
    let message = error(&format!("{route}required_scopes = [\"read\", \"Gold\"]\n"));
    assert!(
        message.starts_with("routes[0].required_scopes"),
        "{message}"
    );
    assert!(
        message.contains("\"Gold\" is the name of a tier"),
        "{message}"
    );
    let fine = format!("{route}required_scopes = [\"orders:read\"]\n");
    assert!(super::super::Config::parse(&fine).is_ok());
}
