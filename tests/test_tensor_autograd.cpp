// test_tensor_autograd.cpp: tensor geometry, views, the allocator, and the autograd tape's behaviour and errors.
#include <doctest/doctest.h>

#include <cstdint>

#include "engine/ops.h"

using namespace eng;

static bool throws_with(const std::function<void()>& f, const std::string& needle) {
  try {
    f();
  } catch (const Error& e) {
    if (std::string(e.what()).find(needle) != std::string::npos) return true;
    MESSAGE("message was: " << e.what());
    return false;
  }
  return false;
}

TEST_SUITE("tensor") {
  TEST_CASE("views share storage and report contiguity") {
    Tensor x = Tensor::from_vector(std::vector<float>{0, 1, 2, 3, 4, 5}, {2, 3});
    Tensor t = x.t();
    CHECK(t.same_storage(x));
    CHECK_FALSE(t.is_contiguous());
    CHECK(t.shape() == Shape{3, 2});
    CHECK(t.to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
    Tensor c = t.contiguous();
    CHECK_FALSE(c.same_storage(x));
    CHECK(c.is_contiguous());
    Tensor s = x.slice(1, 1, 3);
    CHECK(s.same_storage(x));
    CHECK(s.to_vector<float>() == std::vector<float>{1, 2, 4, 5});
    Tensor e = Tensor::from_vector(std::vector<float>{7, 8}, {2, 1}).expand({2, 3});
    CHECK(e.strides()[1] == 0);
    CHECK(e.to_vector<float>() == std::vector<float>{7, 7, 7, 8, 8, 8});
    CHECK(x.view({3, 2}).same_storage(x));
    CHECK(throws_with([&] { t.view({6}); }, "without a copy"));
    CHECK(t.reshape({6}).to_vector<float>() == std::vector<float>{0, 3, 1, 4, 2, 5});
    x.slice(1, 0, 1).fill_(9);  // writes through the view
    CHECK(x.to_vector<float>() == std::vector<float>{9, 1, 2, 9, 4, 5});
  }

  TEST_CASE("dtype conversion and errors") {
    Tensor x = Tensor::from_vector(std::vector<double>{1.5, -2.25}, {2});
    CHECK(x.to(DType::F32).to_vector<float>() == std::vector<float>{1.5f, -2.25f});
    CHECK(x.to(DType::I64).to_vector<int64_t>() == std::vector<int64_t>{1, -2});
    CHECK(Tensor::from_vector(std::vector<float>{1.0f, 3.0f}, {2}).to(DType::BF16).to_vector<float>() == std::vector<float>{1.0f, 3.0f});
    CHECK(throws_with([&] { Tensor::from_vector(std::vector<float>{1, 2, 3}, {2, 2}); }, "do not fill shape"));
    CHECK(throws_with([&] { add(x, x.to(DType::F32)); }, "dtypes differ"));
    CHECK(throws_with([&] { add(Tensor::zeros({2, 3}), Tensor::zeros({3, 2})); }, "do not broadcast"));
    CHECK(throws_with([&] { matmul(Tensor::zeros({2, 3}), Tensor::zeros({2, 3})); }, "do not align"));
    CHECK(throws_with([&] { x.data<float>(); }, "data<f32>() called on a f64 tensor"));
    CHECK(throws_with([&] { Tensor::zeros({2}, DType::F32, Device::cuda(0)).numel(); }, "cuda"));
  }

  TEST_CASE("allocator: 64-byte aligned, and the steady state allocates nothing new") {
    Tensor a = Tensor::empty({7});
    CHECK(reinterpret_cast<uintptr_t>(a.raw_data()) % 64 == 0);
    Tensor w = Tensor::ones({64, 32});
    auto step = [&] {
      Tensor x = Tensor::ones({16, 64}).requires_grad_();
      Tensor y = sum(gelu(matmul(x, w)));
      y.backward();
    };
    step();
    step();
    size_t before = allocator_for(Device::cpu()).stats().system_allocs;
    for (int i = 0; i < 5; i++) step();
    CHECK(allocator_for(Device::cpu()).stats().system_allocs == before);
  }
}

TEST_SUITE("autograd") {
  TEST_CASE("gradient of a reused tensor accumulates over its uses") {
    Tensor x = Tensor::from_vector(std::vector<double>{2.0}, {1}).requires_grad_();
    Tensor y = sum(x * x * x + x);  // dy/dx = 3x^2 + 1 = 13
    y.backward();
    CHECK(x.grad().item() == doctest::Approx(13.0));
  }

  TEST_CASE("parameter gradients accumulate across backward calls until zeroed") {
    Tensor x = Tensor::from_vector(std::vector<double>{1.0, 2.0}, {2}).requires_grad_();
    sum(x * 3.0).backward();
    sum(x * 3.0).backward();
    CHECK(x.grad().to_vector<double>() == std::vector<double>{6.0, 6.0});
    x.zero_grad();
    CHECK_FALSE(x.grad().defined());
  }

  TEST_CASE("backward errors are clear") {
    Tensor x = Tensor::ones({3}, DType::F64).requires_grad_();
    Tensor y = x * 2.0;
    CHECK(throws_with([&] { y.backward(); }, "one-element output"));
    CHECK(throws_with([&] { y.backward(Tensor::ones({4}, DType::F64)); }, "does not match output shape"));
    Tensor z = sum(exp(x));
    z.backward();
    CHECK(throws_with([&] { z.backward(); }, "second time"));
    Tensor c = Tensor::ones({3});
    CHECK(throws_with([&] { sum(c).backward(); }, "does not require grad"));
  }

  TEST_CASE("retain_graph allows a second backward") {
    Tensor x = Tensor::from_vector(std::vector<double>{0.5}, {1}).requires_grad_();
    Tensor z = sum(tanh(x));
    z.backward(Tensor(), true);
    double g1 = x.grad().item();
    z.backward();
    CHECK(x.grad().item() == doctest::Approx(2 * g1));
  }

  TEST_CASE("NoGradGuard and detach record nothing") {
    Tensor x = Tensor::ones({2}).requires_grad_();
    {
      NoGradGuard ng;
      CHECK_FALSE((x * 2.0).requires_grad());
    }
    CHECK((x * 2.0).requires_grad());
    CHECK_FALSE(x.detach().requires_grad());
    CHECK((x * 2.0).detach().is_leaf());
  }

  TEST_CASE("a backward keeps only what it captured") {
    // y = x + w: add's backward needs no input values, so dropping x frees its storage although y lives on.
    Tensor w = Tensor::ones({1000}).requires_grad_();
    std::weak_ptr<Storage> xs;
    Tensor y;
    {
      Tensor x = Tensor::ones({1000});
      xs = x.storage();
      y = add(x, w);
    }
    CHECK(xs.expired());
    sum(y).backward();
    CHECK(w.grad().to_vector<float>()[0] == 1.0f);
  }

  TEST_CASE("a long chain does not overflow the stack") {
    Tensor x = Tensor::ones({1}, DType::F64).requires_grad_();
    Tensor y = x;
    for (int i = 0; i < 200000; i++) y = y * 1.0;
    sum(y).backward();
    CHECK(x.grad().item() == 1.0);
  }
}
