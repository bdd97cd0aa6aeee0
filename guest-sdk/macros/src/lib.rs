//! The `#[guest_sdk::job]` attribute. Job authors use it through the `guest-sdk` crate,
//! which documents it; this crate only checks the function and writes the export.

use proc_macro::TokenStream;
use proc_macro2::Span;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ItemFn, PathArguments, ReturnType, Type, parse_macro_input};

/// The signature every message below points the author to.
const EXPECTED: &str =
    "fn NAME(ctx: &mut guest_sdk::Ctx<State>) -> guest_sdk::Result<guest_sdk::Outcome>";

/// Exports the function as the job's entry point. See `guest_sdk::job` for the docs.
#[proc_macro_attribute]
pub fn job(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let mut function = parse_macro_input!(item as ItemFn);
    let mut errors = Vec::new();
    if !attr.is_empty() {
        errors.push(syn::Error::new_spanned(
            &attr,
            "`#[guest_sdk::job]` takes no arguments",
        ));
    }
    check_signature(&function, &mut errors);
    if !errors.is_empty() {
        // The export would only add follow-on errors about the same mistakes.
        let errors = errors.iter().map(syn::Error::to_compile_error);
        return quote! {
            #function
            #(#errors)*
        }
        .into();
    }
    // Called once, the function would be inlined into the export: kept apart, it shows
    // under its own name in the wasm backtrace of a job that traps.
    if !function
        .attrs
        .iter()
        .any(|attr| attr.path().is_ident("inline"))
    {
        function.attrs.push(syn::parse_quote!(#[inline(never)]));
    }
    let name = &function.sig.ident;
    // The call is spanned at the return type, so that a function returning something
    // other than a `Result<Outcome, _>` gets its error there.
    let call = match &function.sig.output {
        ReturnType::Type(_, output) => quote_spanned! { output.span() =>
            ::guest_sdk::__private::run_job(env!("CARGO_CRATE_NAME"), #name)
        },
        ReturnType::Default => quote! {
            ::guest_sdk::__private::run_job(env!("CARGO_CRATE_NAME"), #name)
        },
    };
    quote! {
        #function
        const _: () = {
            struct Job;
            impl ::guest_sdk::__private::Guest for Job {
                fn run() -> ::guest_sdk::__private::RunResult {
                    #call
                }
            }
            ::guest_sdk::__private::export! { Job with_types_in ::guest_sdk::__private }
        };
    }
    .into()
}

/// Pushes one located error for each way `function` cannot be a job.
fn check_signature(function: &ItemFn, errors: &mut Vec<syn::Error>) {
    let sig = &function.sig;
    if let Some(token) = &sig.asyncness {
        errors.push(syn::Error::new(
            token.span(),
            "a job function cannot be `async`: the runner calls it once and waits for it to return",
        ));
    }
    if let Some(token) = &sig.unsafety {
        errors.push(syn::Error::new(
            token.span(),
            "a job function cannot be `unsafe`: the runner has no contract to uphold for it",
        ));
    }
    if let Some(abi) = &sig.abi {
        errors.push(syn::Error::new_spanned(
            abi,
            "a job function cannot have an `extern` ABI: the attribute writes the export",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new_spanned(
            &sig.generics,
            format!("a job function cannot be generic: name the state type, as in `{EXPECTED}`"),
        ));
    }
    let mut inputs = sig.inputs.iter();
    match inputs.next() {
        None => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            format!("a job function takes its context: `{EXPECTED}`"),
        )),
        Some(FnArg::Receiver(receiver)) => errors.push(syn::Error::new_spanned(
            receiver,
            format!("a job function is a free function, not a method: `{EXPECTED}`"),
        )),
        Some(FnArg::Typed(argument)) => {
            if !is_mut_ref_to_ctx(&argument.ty) {
                errors.push(syn::Error::new_spanned(
                    &argument.ty,
                    format!("a job function takes its context as `&mut Ctx<State>`: `{EXPECTED}`"),
                ));
            }
        }
    }
    for extra in inputs {
        errors.push(syn::Error::new_spanned(
            extra,
            format!(
                "a job function takes one argument, its context; read arguments with \
                 `std::env::args()`: `{EXPECTED}`"
            ),
        ));
    }
    if let ReturnType::Default = sig.output {
        errors.push(syn::Error::new(
            end_of_signature(function),
            format!(
                "a job function returns whether it completed or suspended, or why it failed: \
                 `{EXPECTED}`"
            ),
        ));
    }
}

/// True for `&mut Ctx`, `&mut Ctx<T>` and the same through a path (`&mut guest_sdk::Ctx<T>`).
fn is_mut_ref_to_ctx(ty: &Type) -> bool {
    let Type::Reference(reference) = ty else {
        return false;
    };
    if reference.mutability.is_none() {
        return false;
    }
    let Type::Path(path) = &*reference.elem else {
        return false;
    };
    let Some(last) = path.path.segments.last() else {
        return false;
    };
    if last.ident != "Ctx" {
        return false;
    }
    match &last.arguments {
        PathArguments::None => true,
        PathArguments::AngleBracketed(arguments) => {
            arguments.args.len() == 1
                && matches!(arguments.args.first(), Some(GenericArgument::Type(_)))
        }
        PathArguments::Parenthesized(_) => false,
    }
}

/// Where a missing return type would go: just after the argument list.
fn end_of_signature(function: &ItemFn) -> Span {
    function.sig.paren_token.span.close()
}
