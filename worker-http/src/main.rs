mod errors;
mod framing;
mod head;
mod route;
fn main() {}
