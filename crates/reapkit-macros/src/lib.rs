//! `#[reapkit::test]`: runs a test's body in a reapkit test scope. Use it through `reapkit`,
//! which re-exports it; its documentation is there (`reapkit::test`).

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned, ToTokens};
use syn::spanned::Spanned;
use syn::{parse_macro_input, Attribute, Expr, ExprArray, ExprLit, FnArg, ItemFn, Lit, LitBool, LitStr};

/// The file of known leaks, next to the crate's `Cargo.toml` (`reapkit::scope::BASELINE_FILE`).
const BASELINE_FILE: &str = "reapkit-leaks.txt";
/// Leak kinds an `allow` pattern may name (`reapkit::scope::LeakKind`).
const KINDS: [&str; 5] = ["fd", "process", "container", "network", "volume"];

/// Runs a test's body in a reapkit test scope (`reapkit::TestScope`) and fails the test if it
/// leaked: a guard it never dropped (named with the line that created it), a process carrying
/// its marker, a container labelled with it, a child it started by hand, a descriptor it left
/// open. Replaces `#[test]`.
///
/// ```ignore
/// #[reapkit::test(allow = ["fd:socket"], settle = "200ms", eof_grace = "100ms", term_grace = "1s")]
/// fn my_test() -> Result<(), reapkit::Error> { Ok(()) }
/// ```
///
/// Options: `allow = [..]` (accepted leaks: `fd:<kind or path glob>`, `process:<program>`,
/// `container:<image>`), `fd_check = false`, `serialized` (you serialize by other means),
/// `settle` (how long the checks wait for things still closing, default 400 ms), `eof_grace`
/// and `term_grace` (for the test's guards). The body may take `scope: &reapkit::TestScope`.
///
/// With `#[tokio::test]`: put tokio's attribute *above* this one, so the scope wraps the runtime
/// and tasks still holding guards are dropped with it before the checks. Under plain
/// `cargo test`, serial_test's `#[serial]`/`#[file_serial]` written *below* this attribute make
/// the descriptor and child checks exact; without them, such leaks fail the run at its exit.
#[proc_macro_attribute]
pub fn test(args: TokenStream, item: TokenStream) -> TokenStream {
    let mut options = Options::default();
    let parser = syn::meta::parser(|meta| options.parse(meta));
    parse_macro_input!(args with parser);
    let function = parse_macro_input!(item as ItemFn);
    expand(options, function).unwrap_or_else(syn::Error::into_compile_error).into()
}

/// The attribute's options, as builder calls on `reapkit::ScopeBuilder`.
#[derive(Default)]
struct Options {
    calls: Vec<TokenStream2>,
    serialized: bool,
}

impl Options {
    fn parse(&mut self, meta: syn::meta::ParseNestedMeta<'_>) -> syn::Result<()> {
        let Some(name) = meta.path.get_ident().map(ToString::to_string) else {
            return Err(meta.error("expected `allow`, `fd_check`, `serialized`, `settle`, `eof_grace` or `term_grace`"));
        };
        match name.as_str() {
            "serialized" => self.serialized = true,
            "allow" => {
                for pattern in strings(meta.value()?.parse()?)? {
                    check_pattern(&pattern)?;
                    self.calls.push(quote!(.allow(#pattern)));
                }
            }
            "fd_check" => {
                let on: LitBool = meta.value()?.parse()?;
                self.calls.push(quote!(.fd_check(#on)));
            }
            "settle" | "eof_grace" | "term_grace" => {
                let text: LitStr = meta.value()?.parse()?;
                let nanos = humantime::parse_duration(&text.value())
                    .map_err(|e| syn::Error::new(text.span(), format!("{e}; write a duration such as \"300ms\"")))?
                    .as_nanos() as u64;
                let method = syn::Ident::new(&name, meta.path.span());
                self.calls.push(quote!(.#method(::std::time::Duration::from_nanos(#nanos))));
            }
            _ => {
                return Err(meta.error(format!(
                    "unknown option `{name}`; expected allow, fd_check, serialized, settle, eof_grace or term_grace"
                )))
            }
        }
        Ok(())
    }
}

/// `"x"` or `["x", "y"]`.
fn strings(value: Expr) -> syn::Result<Vec<LitStr>> {
    let one = |e: Expr| match e {
        Expr::Lit(ExprLit { lit: Lit::Str(s), .. }) => Ok(s),
        other => Err(syn::Error::new(other.span(), "expected a string such as \"fd:pipe\"")),
    };
    match value {
        Expr::Array(ExprArray { elems, .. }) => elems.into_iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

/// The kind part of `<kind>:<glob>`, checked at compile time (the glob is checked at run time).
fn check_pattern(pattern: &LitStr) -> syn::Result<()> {
    let text = pattern.value();
    match text.split_once(':') {
        Some((kind, glob)) if KINDS.contains(&kind) && !glob.is_empty() => Ok(()),
        _ => Err(syn::Error::new(
            pattern.span(),
            format!("`{text}`: a pattern is `<kind>:<glob>`, kind one of {}, e.g. \"fd:pipe\"", KINDS.join(", ")),
        )),
    }
}

/// Whether `attr` is a test attribute of another macro (`#[tokio::test]`, or the `#[test]`
/// that `#[tokio::test]` above us already emitted): then we must not add our own.
fn is_test_attribute(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|s| s.ident == "test")
}

/// serial_test's attributes below ours: they take their lock before our scope is entered.
fn is_serializing(attr: &Attribute) -> bool {
    attr.path().segments.last().is_some_and(|s| s.ident == "serial" || s.ident == "file_serial")
}

/// Whether `tokens` (the body `#[tokio::test]` generated) build a tokio runtime.
fn builds_a_tokio_runtime(tokens: TokenStream2) -> bool {
    let mut previous = String::new();
    tokens.into_iter().any(|token| match token {
        proc_macro2::TokenTree::Group(group) => builds_a_tokio_runtime(group.stream()),
        proc_macro2::TokenTree::Ident(ident) => {
            let found = previous == "runtime" && ident == "Builder";
            previous = ident.to_string();
            found
        }
        _ => false,
    })
}

fn expand(options: Options, function: ItemFn) -> syn::Result<TokenStream2> {
    let ItemFn { attrs, vis, sig, block } = function;
    if sig.inputs.len() > 1 {
        return Err(syn::Error::new(
            sig.inputs.span(),
            "a reapkit test takes no argument, or one: `scope: &TestScope`",
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        return Err(syn::Error::new(r.span(), "a test is a free function"));
    }
    let test_attribute = (!attrs.iter().any(is_test_attribute)).then(|| quote!(#[::core::prelude::v1::test]));
    let serialized = (options.serialized || attrs.iter().any(is_serializing)).then(|| quote!(.serialized()));
    // Lints the user silenced on the test apply to its body, which moves into an inner function.
    let lint_attributes = attrs.iter().filter(|a| a.path().is_ident("allow"));
    let calls = &options.calls;

    let name = &sig.ident;
    let name_text = LitStr::new(&name.to_string(), Span::call_site());
    let output = &sig.output;
    let inputs = &sig.inputs;
    let asyncness = &sig.asyncness;
    // The scope and the outcome are named with the test's own span, and so is the call that
    // ends the scope: a leak's panic then points at the test's `fn` line, not at this attribute
    // (the location `#[track_caller]` reports is the call's outermost expansion), and the names
    // resolve whatever wrote the test's name (a `macro_rules!` has hygiene of its own).
    let scope = syn::Ident::new("__reapkit_scope", name.span());
    let outcome = syn::Ident::new("__reapkit_outcome", name.span());
    let argument = (!inputs.is_empty()).then(|| quote!(&#scope));
    let baseline = LitStr::new(&format!("/{BASELINE_FILE}"), Span::call_site());
    let run = if asyncness.is_some() {
        quote!(::reapkit::__private::CatchUnwind::new(__reapkit_body(#argument)).await)
    } else {
        quote!(::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| __reapkit_body(#argument))))
    };
    // `#[tokio::test]` above us built this body around a runtime, or below us will. The first
    // runtime with signals enabled opens tokio's process-wide signal socket pair, open until the
    // process exits: a throw-away runtime before any test, noted as the process's own.
    let with_tokio = if sig.asyncness.is_none() {
        builds_a_tokio_runtime(block.to_token_stream())
    } else {
        attrs.iter().any(|a| a.path().segments.first().is_some_and(|s| s.ident == "tokio") && is_test_attribute(a))
    };
    // Before `main`, in a constructor of the test binary: whichever order the attributes are in,
    // it then precedes every runtime of every test.
    let warm_up = with_tokio.then(|| {
        quote! {
            #[::reapkit::__private::ctor::ctor(unsafe, anonymous, crate_path = ::reapkit::__private::ctor)]
            fn __reapkit_tokio_warm_up() {
                ::reapkit::__private::tokio_warm_up(|| {
                    drop(::tokio::runtime::Builder::new_current_thread().enable_all().build())
                });
            }
        }
    });
    let mut outer = sig.clone();
    outer.inputs = Default::default();
    let conclude = quote_spanned!(name.span() => ::reapkit::__private::conclude(#scope, #outcome));

    Ok(quote! {
        #warm_up
        #test_attribute
        #(#attrs)*
        #vis #outer {
            #(#lint_attributes)*
            #asyncness fn __reapkit_body(#inputs) #output #block
            let #scope = ::reapkit::TestScope::builder()
                .name(::reapkit::__private::test_name(::core::module_path!(), #name_text))
                .baseline(::core::concat!(::core::env!("CARGO_MANIFEST_DIR"), #baseline))
                #(#calls)*
                #serialized
                .enter();
            let #outcome = #run;
            #conclude
        }
    }
    .into_token_stream())
}
